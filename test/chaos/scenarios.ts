import { supervisorsKey } from '../../src/redis/keys.js';
import type { Redis } from 'ioredis';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sha256Hex } from '../../src/api/auth.js';
import { listen } from '../../src/api/api-server.js';
import { createApiApp } from '../../src/api/http-api.js';
import { Producer } from '../../src/producers/producer.js';
import { resolveConfig } from '../../src/config/resolve.js';
import { freePort, startEmbeddedRedis, type EmbeddedRedis } from '../../src/redis/embedded-redis.js';
import { CHAOS_PROCESSORS, chaosFleet, quantile, until, type ChaosRedis } from './harness.js';
import { ensureEmbeddedUsers, urlWithCredential } from '../../src/redis/acl.js';

const p = (f: string): string => path.join(CHAOS_PROCESSORS, f);

/** A chaos Redis with the fleet's ACL users (generated once per dir, so a restart keeps them). */
async function redisFor(
  persistent: boolean,
  args: string[] = [],
  port?: number,
  dir?: string,
  prefix = `chaos${Date.now().toString(36)}`,
): Promise<EmbeddedRedis & ChaosRedis & { dir: string }> {
  const d = dir ?? mkdtempSync(path.join(tmpdir(), 'fleet-chaos-redis-'));
  const users = ensureEmbeddedUsers(d);
  const r = await startEmbeddedRedis({
    dataDir: d,
    persistent,
    args,
    acl: { prefix, users },
    ...(port ? { port } : {}),
  });
  return { ...r, dir: d, prefix, users };
}

/** 1. Supervisors SIGKILLed mid-job under load: every job ends exactly once, none lost. */
export async function killWorkers(opts: { jobs: number; kills: number }): Promise<Record<string, number | string>> {
  const redis = await redisFor(false);
  const fleet = await chaosFleet(redis, {
    // A job can be on a supervisor at each kill: each kill may stall it once more.
    supervisor: {
      lockDurationMs: 2000,
      stalledIntervalMs: 1000,
      shutdownDeadlineMs: 1000,
      maxStalledCount: opts.kills,
    },
    jobTypes: [
      {
        name: 'work',
        processor: p('work.js'),
        isolation: 'pool',
        concurrency: 4,
        warmSandboxes: 4,
        attempts: 5,
        backoff: { type: 'fixed', delayMs: 100 },
        timeoutMs: 10_000,
      },
    ],
  });
  const log = path.join(fleet.dir, 'executions.log');
  try {
    await fleet.spawnSupervisor();
    await fleet.spawnSupervisor();
    const ids = (
      await fleet.producer.enqueueBatch(
        'work',
        Array.from({ length: opts.jobs }, () => ({ data: { ms: 40, log } })),
      )
    ).map((j) => j.id);
    for (let k = 0; k < opts.kills; k++) {
      await new Promise((r) => setTimeout(r, 700));
      const victim = fleet.supervisors.find((s) => s.alive())!;
      victim.child.kill('SIGKILL');
      await victim.exited;
      await fleet.spawnSupervisor();
    }
    const q = fleet.producer.queue('work');
    await until(
      'all jobs to end',
      async () => {
        const c = await q.getJobCounts('completed', 'failed');
        return (c.completed ?? 0) + (c.failed ?? 0) >= opts.jobs;
      },
      120_000,
    );
    const c = await q.getJobCounts('completed', 'failed', 'waiting', 'active', 'delayed');
    const executions = existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').length : 0;
    let retried = 0;
    const failedReasons: Record<string, number> = {};
    for (const id of ids) {
      const job = await q.getJob(id);
      if ((job?.attemptsMade ?? 0) > 1) retried++;
      if (job?.failedReason && (await job.getState()) === 'failed')
        failedReasons[job.failedReason] = (failedReasons[job.failedReason] ?? 0) + 1;
    }
    return {
      jobs: opts.jobs,
      kills: opts.kills,
      completed: c.completed ?? 0,
      failed: c.failed ?? 0,
      lost: opts.jobs - (c.completed ?? 0) - (c.failed ?? 0),
      leftInQueue: (c.waiting ?? 0) + (c.active ?? 0) + (c.delayed ?? 0),
      executions,
      reExecuted: executions - opts.jobs,
      retried,
      failedReasons: JSON.stringify(failedReasons),
    };
  } finally {
    await fleet.release();
    await redis.release();
    rmSync(redis.dir, { recursive: true, force: true });
  }
}

/**
 * 2. Redis SIGKILLed and restarted under load. Producers must get an error or an acknowledgement,
 * never a silent drop. With `appendfsync always` every acknowledged job survives; with
 * `everysec` up to about one second of acknowledged writes can be lost on a crash (reported).
 */
export async function redisRestart(opts: {
  fsync: 'always' | 'everysec';
  seconds: number;
}): Promise<Record<string, number | string>> {
  const port = await freePort();
  let redis = await redisFor(true, ['--appendfsync', opts.fsync], port);
  const dir = redis.dir;
  const fleet = await chaosFleet(redis, {
    supervisor: { lockDurationMs: 2000, stalledIntervalMs: 1000 },
    jobTypes: [
      {
        name: 'work',
        processor: p('work.js'),
        isolation: 'pool',
        concurrency: 8,
        warmSandboxes: 2,
        attempts: 5,
        backoff: { type: 'fixed', delayMs: 200 },
        keepCompletedSeconds: 3600,
      },
    ],
  });
  const acked: string[] = [];
  let errors = 0;
  try {
    await fleet.spawnSupervisor();
    const stopAt = Date.now() + opts.seconds * 1000;
    const load = Promise.all(
      Array.from({ length: 4 }, async () => {
        while (Date.now() < stopAt) {
          try {
            acked.push((await fleet.producer.enqueue('work', { ms: 5 })).id);
          } catch {
            errors++;
            await new Promise((r) => setTimeout(r, 50));
          }
        }
      }),
    );
    await new Promise((r) => setTimeout(r, (opts.seconds * 1000) / 3));
    redis.process.kill('SIGKILL');
    await new Promise((r) => redis.process.once('exit', r));
    await new Promise((r) => setTimeout(r, 1000));
    redis = await redisFor(true, ['--appendfsync', opts.fsync], port, dir, redis.prefix);
    await load;
    const q = fleet.producer.queue('work');
    // The chaos Redis is a single server (never a cluster).
    const client = fleet.producer.redis as Redis;
    // Each poll reads the finished sets once and checks only the ids still open, in one
    // pipeline: the harness must measure Redis, not its own round trips (80k ids per run).
    let open = new Set(acked);
    let lost = 0;
    await until(
      'acknowledged jobs to be processed',
      async () => {
        const finished = new Set([
          ...(await client.zrange(q.toKey('completed'), '0', '-1')),
          ...(await client.zrange(q.toKey('failed'), '0', '-1')),
        ]);
        open = new Set([...open].filter((id) => !finished.has(id)));
        const pipe = client.pipeline();
        for (const id of open) pipe.exists(q.toKey(id));
        const exists = ((await pipe.exec()) ?? []).map(([, n]: [Error | null, unknown]) => n === 1);
        const ids = [...open];
        lost = exists.filter((e: boolean) => !e).length;
        // Still open and still stored: waiting, active or delayed for a retry.
        return ids.every((_, i) => !exists[i]);
      },
      60_000 + acked.length,
    );
    const supervisorAlive = fleet.supervisors.every((s) => s.alive()) ? 1 : 0;
    return {
      fsync: opts.fsync,
      acknowledged: acked.length,
      producerErrors: errors,
      processed: acked.length - lost,
      lostAcknowledged: lost,
      supervisorAlive,
    };
  } finally {
    await fleet.release();
    await redis.release();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** 4. Runaway jobs are contained while another job type keeps being served (its latency measured). */
export async function runaways(): Promise<Record<string, number | string>> {
  const redis = await redisFor(false);
  const timeoutMs = 2000;
  const fleet = await chaosFleet(redis, {
    jobTypes: [
      {
        name: 'runaway',
        processor: p('runaway.js'),
        isolation: 'job',
        concurrency: 5,
        warmSandboxes: 5,
        attempts: 1,
        timeoutMs,
        abortGraceMs: 200,
        maxOldGenerationSizeMb: 128,
        maxResultBytes: 1_048_576,
      },
      // Memory hogs and the log flood get a long timeout: their outcome must be the memory limit
      // (or, for the flood, completion), however slowly a busy machine lets V8 reach it (near the
      // limit it spends seconds in last-resort GCs) or lets 200,000 console lines through.
      {
        name: 'hog',
        processor: p('runaway.js'),
        isolation: 'job',
        concurrency: 3,
        warmSandboxes: 3,
        attempts: 1,
        timeoutMs: 30_000,
        abortGraceMs: 200,
        maxOldGenerationSizeMb: 128,
        maxResultBytes: 1_048_576,
      },
      { name: 'work', processor: p('work.js'), isolation: 'pool', concurrency: 2, warmSandboxes: 2, attempts: 1 },
    ],
  });
  try {
    const sup = await fleet.spawnSupervisor();
    const modes = ['loop', 'alloc', 'timers', 'huge', 'flood'] as const;
    const typeOf = (mode: (typeof modes)[number]): string => (mode === 'loop' || mode === 'timers' ? 'runaway' : 'hog');
    const ids = await Promise.all(
      modes.map(async (mode) => [mode, (await fleet.producer.enqueue(typeOf(mode), { mode })).id] as const),
    );
    const latencies: number[] = [];
    const state = async (id: string): Promise<string> => (await fleet.producer.getJob(id)).state;
    const started = Date.now();
    while (Date.now() - started < timeoutMs + 1500) {
      const { id } = await fleet.producer.enqueue('work', { ms: 1 });
      await until('work job', async () => (await fleet.producer.getJob(id)).state === 'completed', 10_000);
      const j = await fleet.producer.getJob(id);
      latencies.push(j.timings.finishedAt! - j.timings.enqueuedAt);
      await new Promise((r) => setTimeout(r, 50));
    }
    await until(
      'runaways to end',
      async () => (await Promise.all(ids.map(([, id]) => state(id)))).every((s) => s === 'failed' || s === 'completed'),
      40_000,
    );
    const out: Record<string, number | string> = {};
    for (const [mode, id] of ids) {
      const j = await fleet.producer.getJob(id);
      out[`${mode}Outcome`] = j.error?.code ?? j.state;
      if (mode === 'loop') out.loopKilledAfterMs = j.timings.durationMs ?? -1;
    }
    out.timeoutMs = timeoutMs;
    out.otherTypeP50Ms = quantile(latencies, 0.5);
    out.otherTypeP99Ms = quantile(latencies, 0.99);
    out.otherTypeJobs = latencies.length;
    out.supervisorAlive = sup.alive() ? 1 : 0;
    out.supervisorRssMb = Math.round(sup.rssMb());
    return out;
  } finally {
    await fleet.release();
    await redis.release();
    rmSync(redis.dir, { recursive: true, force: true });
  }
}

/** 5. A bounded fuzz of hostile HTTP input: every answer a precise 4xx, server alive, nothing enqueued. */
export async function fuzz(opts: { requests: number; seed?: number }): Promise<Record<string, number>> {
  const redis = await redisFor(false);
  const token = 'fuzz-token-0123456789abcdef';
  const limited = 'fuzz-limited-0123456789abcdef';
  const config = resolveConfig(
    {
      redis: { url: urlWithCredential(redis.url, redis.users.roles.api!), prefix: redis.prefix },
      api: { bodyLimitBytes: 65_536 },
      producers: [
        { name: 'fuzz', tokenSha256: sha256Hex(token), jobTypes: ['*'] },
        { name: 'limited', tokenSha256: sha256Hex(limited), jobTypes: ['other'] },
      ],
      jobTypes: [
        {
          name: 'greet',
          processor: p('work.js'),
          payloadSchema: {
            type: 'object',
            properties: { name: { type: 'string', minLength: 1, maxLength: 100 } },
            required: ['name'],
            additionalProperties: false,
          },
        },
        { name: 'other', processor: p('work.js') },
      ],
    },
    { baseDir: CHAOS_PROCESSORS },
  );
  const producer = new Producer({ config });
  const server = await listen(createApiApp({ producer }), '127.0.0.1', 0);
  const port = (server.address() as { port: number }).port;
  let seed = opts.seed ?? 42;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const deep = (n: number): string => '['.repeat(n) + ']'.repeat(n);
  const bodies = [
    '{"name":',
    '{name: "x"}',
    '',
    'null',
    '[]',
    '"just a string"',
    '{"name": 42}',
    '{"name": ""}',
    '{"name": "x", "extra": 1}',
    `{"name": "${'x'.repeat(200)}"}`,
    JSON.stringify({ nome: 1, '\u0000\u202e\ud800': 'x' }),
    `{"n\\u0061me": ${'1'.repeat(400)}}`,
    `{"nombre": "${'\\ud83d'.repeat(10)}"}`,
    Buffer.from([0x7b, 0x22, 0x6e, 0x61, 0x6d, 0x65, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0xc0, 0x22, 0x7d]),
    deep(5000),
    deep(200_000),
    'x'.repeat(70_000),
    '{"__proto__": {"polluted": true}}',
    '{"constructor": {"prototype": {"polluted": 1}}}',
    '\uFEFF{"nome":"bom"}',
  ];
  const paths = [
    '/v1/jobs/greet',
    '/v1/jobs/..%2F..%2Fetc%2Fpasswd',
    '/v1/jobs/%00',
    '/v1/jobs/GREET',
    '/v1/jobs/greet%20',
    '/v1/jobs/' + 'a'.repeat(300),
    '/v1/jobs/greet/batch',
    '/v1/jobs/../../etc/passwd',
    '/v1/jobs/%2e%2e',
    '/v1/jobs/other',
  ];
  const auths = [
    `Bearer ${token}`,
    `Bearer ${token}`,
    `Bearer ${token}`,
    undefined,
    'Bearer ',
    'Basic abc',
    `Bearer ${token}x`,
    `Bearer ${limited}`,
    `bearer ${token}`,
    `Bearer ${'x'.repeat(600)}`,
  ];
  const byStatus: Record<string, number> = {};
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  const send = (i: number): Promise<number> =>
    new Promise((resolve) => {
      const path_ = paths[rand(paths.length)]!;
      let body = bodies[rand(bodies.length)]!;
      const auth = auths[rand(auths.length)];
      // `other` accepts any JSON: its requests always get broken JSON, so every request has a flaw.
      if (path_ === '/v1/jobs/other') body = '{"name":';
      const headers: Record<string, string> = { 'content-type': rand(10) === 0 ? 'text/plain' : 'application/json' };
      if (auth !== undefined) headers.authorization = auth;
      if (rand(20) === 0) headers['x-junk'] = 'y'.repeat(20_000);
      if (rand(15) === 0) headers['idempotency-key'] = 'bad key with spaces';
      const req = http.request(
        { host: '127.0.0.1', port, path: path_, method: i % 17 === 0 ? 'PUT' : 'POST', headers, agent },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', () => resolve(-1));
      req.end(body);
    });
  try {
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < opts.requests) {
          const status = await send(next++);
          const k = status === -1 ? 'connection-error' : String(status);
          byStatus[k] = (byStatus[k] ?? 0) + 1;
        }
      }),
    );
    const alive = await new Promise<number>((resolve) =>
      http
        .get({ host: '127.0.0.1', port, path: '/healthz' }, (res) => resolve(res.statusCode === 200 ? 1 : 0))
        .on('error', () => resolve(0)),
    );
    const enqueued =
      (await producer.queue('greet').getJobCounts('waiting', 'delayed', 'prioritized')).waiting! +
      (await producer.queue('other').getJobCounts('waiting')).waiting!;
    const not4xx = Object.entries(byStatus)
      .filter(([s]) => !/^4\d\d$/.test(s))
      .reduce((n, [, c]) => n + c, 0);
    const prototypePolluted = 'polluted' in ({} as Record<string, unknown>) ? 1 : 0;
    return {
      requests: opts.requests,
      ...Object.fromEntries(Object.entries(byStatus).map(([k, v]) => [`status${k}`, v])),
      not4xx,
      enqueued,
      serverAlive: alive,
      prototypePolluted,
    };
  } finally {
    agent.destroy();
    server.close();
    server.closeAllConnections();
    await producer.close();
    await redis.release();
    rmSync(redis.dir, { recursive: true, force: true });
  }
}

/** The supervisor's V8 heap, from its Prometheus endpoint (prom-client's default metrics), in MB. */
async function heapMb(metricsUrl: string): Promise<{ usedMb: number; totalMb: number; externalMb: number } | null> {
  try {
    const text = await (await fetch(metricsUrl)).text();
    const metric = (name: string): number =>
      Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN) / 2 ** 20;
    return {
      usedMb: metric('nodejs_heap_size_used_bytes'),
      totalMb: metric('nodejs_heap_size_total_bytes'),
      externalMb: metric('nodejs_external_memory_bytes'),
    };
  } catch {
    return null;
  }
}

/** Least-squares slope of samples taken once a second, in MB per minute. */
function slopePerMinute(samples: number[]): number {
  const n = samples.length;
  if (n < 2) return NaN;
  const mx = (n - 1) / 2;
  const my = samples.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  samples.forEach((y, x) => {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  });
  return Math.round((num / den) * 60 * 100) / 100;
}

/**
 * 7. Sustained mixed load for `seconds`: throughput, latency, the supervisor's RSS and V8 heap
 * every second (with the slope of each over the last half of the run), spares back at the end.
 * `soak`: the 10-minute run whose RSS must plateau (last 5 minutes: slope ≤ 1 MB/min).
 * `heapSnapshots`: a directory for two heap snapshots of the supervisor (a third of the way, and
 * at the end), to compare what is retained.
 */
export async function load(opts: {
  seconds: number;
  heapSnapshots?: string;
}): Promise<Record<string, number | string>> {
  const redis = await redisFor(false);
  const metricsPort = await freePort();
  const fleet = await chaosFleet(redis, {
    supervisor: { metricsPort },
    jobTypes: [
      {
        name: 'work',
        processor: p('work.js'),
        isolation: 'pool',
        concurrency: 8,
        warmSandboxes: 4,
        attempts: 1,
        timeoutMs: 300,
        abortGraceMs: 50,
        keepCompletedSeconds: 3600,
        keepFailedSeconds: 3600,
      },
      { name: 'fresh', processor: p('work.js'), isolation: 'job', concurrency: 2, warmSandboxes: 2, attempts: 1 },
    ],
  });
  try {
    const sup = await fleet.spawnSupervisor(
      opts.heapSnapshots
        ? { NODE_OPTIONS: `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${opts.heapSnapshots}` }
        : {},
    );
    const metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
    const rss: number[] = [];
    const heap: number[] = [];
    const external: number[] = [];
    const sampler = setInterval(() => {
      const r = Math.round(sup.rssMb());
      rss.push(r);
      void heapMb(metricsUrl).then((h) => {
        if (h) {
          heap.push(Math.round(h.usedMb));
          external.push(Math.round(h.externalMb));
        }
        // Beside the snapshots, as they are taken: `seconds rssMb heapUsedMb heapTotalMb externalMb`.
        if (opts.heapSnapshots)
          appendFileSync(
            path.join(opts.heapSnapshots, 'samples.txt'),
            `${rss.length} ${r} ${h ? [h.usedMb, h.totalMb, h.externalMb].map(Math.round).join(' ') : '- - -'}\n`,
          );
      });
    }, 1000);
    const snapshotAt = Date.now() + (opts.seconds * 1000) / 3;
    let snapshots = 0;
    const stopAt = Date.now() + opts.seconds * 1000;
    let enqueued = 0;
    const q = fleet.producer.queue('work');
    while (Date.now() < stopAt) {
      if (opts.heapSnapshots && snapshots === 0 && Date.now() > snapshotAt) {
        snapshots++;
        sup.child.kill('SIGUSR2');
      }
      const waiting = (await q.getJobCounts('waiting')).waiting ?? 0;
      if (waiting > 500) {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      const batch = Array.from({ length: 50 }, (_, i) => ({
        data: i % 20 === 0 ? { ms: 1000 } : i % 10 === 1 ? { ms: 2, fail: true } : { ms: 2 },
      }));
      await fleet.producer.enqueueBatch('work', batch);
      if (enqueued % 500 === 0) await fleet.producer.enqueue('fresh', { ms: 2 });
      enqueued += batch.length;
    }
    await until(
      'queue to drain',
      async () => {
        const c = await q.getJobCounts('waiting', 'active', 'delayed');
        return (c.waiting ?? 0) + (c.active ?? 0) + (c.delayed ?? 0) === 0;
      },
      60_000,
    );
    clearInterval(sampler);
    if (opts.heapSnapshots) sup.child.kill('SIGUSR2');
    const finished = [...(await q.getJobs(['completed'], 0, -1)), ...(await q.getJobs(['failed'], 0, -1))];
    const lat = finished.map((j) => (j.finishedOn ?? 0) - j.timestamp).filter((x) => x >= 0);
    // Reduced, not spread: a soak finishes a hundred thousand jobs, past the arguments a call takes.
    const first = finished.reduce((m, j) => Math.min(m, j.timestamp), Infinity);
    const last = finished.reduce((m, j) => Math.max(m, j.finishedOn ?? 0), 0);
    const counts = await q.getJobCounts('completed', 'failed');
    // The measurement: how many spares are warm again 1.5 s after the load (a heartbeat or more).
    await new Promise((r) => setTimeout(r, 1500));
    const status = Object.values(await fleet.producer.redis.hgetall(supervisorsKey(fleet.config.redis.prefix))).map(
      (v) => JSON.parse(v) as { pid: number; types: { jobType: string; warm: number; busy: number }[] },
    );
    const mine = status.find((s) => s.pid === sup.child.pid);
    const warm = mine?.types.find((t) => t.jobType === 'fresh')?.warm ?? -1;
    const lastHalf = (xs: number[]): number[] => xs.slice(Math.floor(xs.length / 2));
    return {
      seconds: opts.seconds,
      enqueued,
      completed: counts.completed ?? 0,
      failed: counts.failed ?? 0,
      jobsPerSecond: Math.round(finished.length / ((last - first) / 1000)),
      p50Ms: quantile(lat, 0.5),
      p99Ms: quantile(lat, 0.99),
      rssFirstMb: rss[0] ?? 0,
      rssMaxMb: Math.max(...rss),
      rssLastMb: rss.at(-1) ?? 0,
      rssSlopeLastHalfMbPerMin: slopePerMinute(lastHalf(rss)),
      heapUsedFirstMb: heap[0] ?? 0,
      heapUsedMaxMb: Math.max(...heap),
      heapUsedLastMb: heap.at(-1) ?? 0,
      heapUsedSlopeLastHalfMbPerMin: slopePerMinute(lastHalf(heap)),
      externalLastMb: external.at(-1) ?? 0,
      rssSamples: rss.join(' '),
      heapUsedSamples: heap.join(' '),
      freshWarmSparesAtEnd: warm,
      freshWarmSparesConfigured: 2,
    };
  } finally {
    await fleet.release();
    await redis.release();
    rmSync(redis.dir, { recursive: true, force: true });
  }
}

/** A TCP proxy that can cut every connection and refuse new ones for a while: a real outage. */
async function outageProxy(
  targetPort: number,
): Promise<{ port: number; cut(): Promise<void>; restore(): Promise<void>; close(): Promise<void> }> {
  const net = await import('node:net');
  const port = await freePort();
  const sockets = new Set<import('node:net').Socket>();
  let server: import('node:net').Server | null = null;
  const listen = (): Promise<void> =>
    new Promise((resolve) => {
      server = net.createServer((client) => {
        const upstream = net.connect(targetPort, '127.0.0.1');
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('close', () => sockets.delete(s));
          s.on('error', () => s.destroy());
        }
        client.pipe(upstream).pipe(client);
      });
      server.listen(port, '127.0.0.1', () => resolve());
    });
  const cut = (): Promise<void> =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      if (server) server.close(() => resolve());
      else resolve();
      server = null;
    });
  await listen();
  return { port, cut, restore: listen, close: cut };
}

/**
 * 3. Vault unreachable for a few seconds during load: jobs needing secrets fail retryably and
 * succeed after recovery; every delivery and every failed fetch is in the audit stream.
 */
export async function vaultOutage(opts: { jobs: number; outageMs: number }): Promise<Record<string, number | string>> {
  const { startVault, setupDevVault } = await import('../servers/test-servers.js');
  const { readAudit } = await import('../../src/secrets/audit.js');
  const vault = await startVault();
  if ('reason' in vault) return { skipped: vault.reason };
  const redis = await redisFor(false);
  const proxy = await outageProxy(Number(new URL(vault.url).port));
  try {
    const setup = await setupDevVault(vault, [['work', ['api-key']]]);
    await fetch(`${vault.url}/v1/secret/data/fleet/api-key`, {
      method: 'POST',
      headers: { 'X-Vault-Token': vault.rootToken },
      body: JSON.stringify({ data: { value: 'chaos-vault-secret-0123456789' } }),
    });
    process.env.FLEET_CHAOS_ROLE_ID = setup.roleId;
    process.env.FLEET_CHAOS_SECRET_ID = setup.secretId;
    const fleet = await chaosFleet(redis, {
      secrets: {
        provider: 'vault',
        vault: {
          address: `http://127.0.0.1:${proxy.port}`,
          auth: 'approle',
          roleIdEnv: 'FLEET_CHAOS_ROLE_ID',
          secretIdEnv: 'FLEET_CHAOS_SECRET_ID',
          requestTimeoutMs: 1000,
        },
      },
      jobTypes: [
        {
          name: 'work',
          processor: p('work.js'),
          isolation: 'pool',
          concurrency: 4,
          warmSandboxes: 2,
          attempts: 20,
          backoff: { type: 'fixed', delayMs: 300 },
          secrets: ['api-key'],
          keepCompletedSeconds: 3600,
        },
      ],
    });
    try {
      await fleet.spawnSupervisor();
      const ids: string[] = [];
      const spacing = 6000 / opts.jobs;
      const enqueueing = (async () => {
        for (let i = 0; i < opts.jobs; i++) {
          ids.push((await fleet.producer.enqueue('work', { ms: 5 })).id);
          await new Promise((r) => setTimeout(r, spacing));
        }
      })();
      await new Promise((r) => setTimeout(r, 1500));
      await proxy.cut();
      await new Promise((r) => setTimeout(r, opts.outageMs));
      await proxy.restore();
      await enqueueing;
      const q = fleet.producer.queue('work');
      await until(
        'jobs to end after recovery',
        async () => {
          const c = await q.getJobCounts('completed', 'failed');
          return (c.completed ?? 0) + (c.failed ?? 0) >= opts.jobs;
        },
        60_000,
      );
      const c = await q.getJobCounts('completed', 'failed');
      let retried = 0;
      let attempts = 0;
      for (const id of ids) {
        const j = await q.getJob(id);
        attempts += j?.attemptsMade ?? 0;
        if ((j?.attemptsMade ?? 0) > 1) retried++;
      }
      // Supervisors write the audit in batches: wait until every completed job's grant is in it.
      let audit: Awaited<ReturnType<typeof readAudit>> = [];
      const grants = (): number => audit.filter((a) => a.outcome === 'granted' && a.action === 'access').length;
      await until(
        'the grant of every completed job in the audit trail',
        async () => {
          audit = await readAudit(fleet.producer.redis, fleet.config.redis.prefix, { limit: 100_000 });
          return grants() >= (c.completed ?? 0);
        },
        10_000,
      );
      const granted = grants();
      const errors = audit.filter((a) => a.outcome === 'error').length;
      await fleet.release();
      return {
        jobs: opts.jobs,
        outageMs: opts.outageMs,
        completed: c.completed ?? 0,
        failed: c.failed ?? 0,
        retriedJobs: retried,
        failedAttempts: attempts - (c.completed ?? 0) - (c.failed ?? 0),
        auditGranted: granted,
        auditErrors: errors,
        server: vault.via,
      };
    } catch (err) {
      await fleet.release();
      throw err;
    }
  } finally {
    await proxy.close();
    await redis.release();
    rmSync(redis.dir, { recursive: true, force: true });
    await vault.release();
  }
}
