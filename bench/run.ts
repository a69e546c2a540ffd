/**
 * `npm run bench`: every figure measured in one run on one private Redis, so ratios compare like
 * with like. `--json` prints one JSON object; `--jobs N` / `--concurrency C` size the run.
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { resolveConfig, type FleetConfig } from '../src/config/resolve.js';
import { sha256Hex } from '../src/api/auth.js';
import { queuePrefix } from '../src/redis/keys.js';
import { startEmbeddedRedis } from '../src/redis/embedded-redis.js';
import { ensureEmbeddedUsers, urlWithCredential } from '../src/redis/acl.js';
import { compiledPath } from '../src/runtime-path.js';
import { Sandbox } from '../src/workers/sandbox.js';
import { SANDBOX_ENTRY } from '../src/workers/sandbox-host.js';
import { stopSpawner } from '../src/workers/sandbox-spawner.js';
import { probeOsLayer, processSandboxCommand, type OsLayer } from '../src/workers/sandbox-boundary.js';
import { probeResourceLimits } from '../src/workers/resource-limits.js';
import { CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { LocalProvider } from '../src/secrets/local-provider.js';
import { KmsProvider } from '../src/secrets/kms-provider.js';
import { SecretsManagerProvider } from '../src/secrets/secrets-manager-provider.js';
import { Supervisor } from '../src/workers/supervisor.js';
import { silentLogger } from '../src/observability/logger.js';
import { atRestRuns } from './at-rest.js';
import { cpuPerJob, startCpuMeter, type CpuPerJob } from './cpu-meter.js';

const { values: args } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    jobs: { type: 'string', default: '3000' },
    'spawn-jobs': { type: 'string', default: '400' },
    concurrency: { type: 'string', default: '8' },
    'secret-jobs': { type: 'string', default: '1000' },
    /** `layers`: only the spawn cost of the kernel's limits (cgroup + rlimits, seccomp); `least-privilege`: only the Redis ACL users + audit MAC chain comparison; `injection`: only the secret injection overhead; `at-rest`: only job data sealed at rest vs not; `dynamic`: only a dynamic database credential's mint and revoke (OpenBao + PostgreSQL); `roles`: only the idle RSS of each role; `secrets`: the per-job overhead of one secret from each provider vs none; `secrets-manager`: that for Secrets Manager (moto) alone. */
    only: { type: 'string' },
    /** Directory: a CPU profile of this process for each contender's throughput phase (`<label>.cpuprofile`). */
    profile: { type: 'string' },
    /** Pairs of runs behind each paired ratio (median kept). */
    rounds: { type: 'string', default: '3' },
    /** With `--only cpu`: only these paired ratios (comma-separated `ratios.cpu` keys). */
    pairs: { type: 'string' },
    /** supervisor.sandboxNice of fleet's contenders (the product's default when absent). */
    'sandbox-nice': { type: 'string' },
    /** MB this process holds (written, so resident) before it starts anything: a larger supervisor, whose every fork() costs more. */
    'ballast-mb': { type: 'string', default: '0' },
  },
});
const ballast = Array.from({ length: Number(args['ballast-mb']) }, () => Buffer.alloc(1024 * 1024, 1));
const ROUNDS = Number(args.rounds);
/** Every process the run starts is accounted from here on (a cgroup of its own where it can make one). */
const meter = startCpuMeter();
const JOBS = Number(args.jobs);
const SPAWN_JOBS = Number(args['spawn-jobs']);
const C = Number(args.concurrency);
const NOOP = compiledPath(import.meta.url, './noop-processor.js');
const WITH_SECRET = compiledPath(import.meta.url, './secret-processor.js');
const SECRET_JOBS = Number(args['secret-jobs']);
const now = (): number => performance.timeOrigin + performance.now();
const say = (s: string): void => {
  if (!args.json) process.stderr.write(`${s}\n`);
};

interface RunFigures {
  jobs: number;
  /** CPU per job of the throughput phase, every process of the run summed (cpu-meter.ts). */
  cpu: CpuPerJob;
  jobsPerSecond: number;
  p50StartMs: number;
  p99StartMs: number;
}

function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}
const round = (n: number, d = 2): number => Math.round(n * 10 ** d) / 10 ** d;

let prefixSeq = 0;
interface BenchExtra {
  processor?: string;
  secrets?: Record<string, unknown>;
  dataDir?: string;
  sandbox?: 'process' | 'thread';
  osLayer?: 'auto' | 'off';
  /** Key prefix (the Redis ACL users are built for one). @defaultValue a fresh `benchN` */
  prefix?: string;
}
function benchConfig(url: string, isolation: 'job' | 'pool', extra: BenchExtra = {}): FleetConfig {
  return resolveConfig(
    {
      redis: { url, prefix: extra.prefix ?? `bench${++prefixSeq}` },
      ...(extra.secrets ? { secrets: extra.secrets } : {}),
      // Never beside the processors: every sandbox may read its processor's directory.
      dataDir: extra.dataDir ?? mkdtempSync(path.join(tmpdir(), 'fleet-bench-data-')),
      supervisor: {
        metricsPort: 0,
        osLayer: extra.osLayer ?? 'auto',
        ...(args['sandbox-nice'] !== undefined ? { sandboxNice: Number(args['sandbox-nice']) } : {}),
      },
      jobTypes: [
        {
          name: 'noop',
          processor: extra.processor ?? NOOP,
          isolation,
          concurrency: C,
          warmSandboxes: C,
          attempts: 1,
          timeoutMs: 30_000,
          keepCompletedSeconds: 3600,
          ...(extra.secrets ? { secrets: ['bench-key'] } : {}),
          ...(extra.sandbox ? { sandbox: extra.sandbox } : {}),
        },
      ],
    },
    { baseDir: path.dirname(NOOP) },
  );
}

/**
 * Two phases per contender. Throughput: the worker is started and idle, then `jobs` no-ops are
 * enqueued (1000 per addBulk); the clock runs from the first enqueue to the last completion. Latency below saturation: jobs enqueued one at a time at half that
 * throughput, so the queue is empty and spares have time to start; enqueue-to-start is taken
 * inside the processor.
 */
async function measure(
  name: string,
  jobs: number,
  queue: Queue,
  start: () => Promise<{ onCompleted(cb: () => void): void; stop(): Promise<void> }>,
): Promise<RunFigures> {
  let done = 0;
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  // The runner is started (sandboxes warm, providers ready) before the clock starts.
  const runner = await start();
  runner.onCompleted(() => {
    if (++done === jobs) resolveAll();
  });
  const profiler = args.profile ? await startProfile() : null;
  const cpu0 = meter.read();
  const t0 = performance.now();
  for (let i = 0; i < jobs; i += 1000) {
    await queue.addBulk(
      Array.from({ length: Math.min(1000, jobs - i) }, () => ({ name: 'noop', data: {}, opts: { attempts: 1 } })),
    );
  }
  await all;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuPerJob(cpu0, meter.read(), jobs);
  if (profiler && args.profile)
    await profiler.stop(path.join(args.profile, `${name.replace(/[^a-z0-9]+/gi, '-')}.cpuprofile`));

  // Latency phase, below saturation: jobs arrive at half the measured throughput, one at a time.
  const latencyJobs = Math.min(200, Math.max(50, Math.round(jobs / 4)));
  const intervalMs = 2000 / (jobs / seconds);
  const lat: number[] = [];
  for (let i = 0; i < latencyJobs; i++) {
    const due = performance.now() + intervalMs;
    const enqueuedAt = now();
    const job = await queue.add('noop', {}, { attempts: 1 });
    const result = await waitResult(queue, job.id!);
    lat.push(result.startedAt - enqueuedAt);
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await runner.stop();
  lat.sort((a, b) => a - b);
  const figures: RunFigures = {
    jobs,
    cpu,
    jobsPerSecond: round(jobs / seconds, 0),
    p50StartMs: round(quantile(lat, 0.5)),
    p99StartMs: round(quantile(lat, 0.99)),
  };
  say(
    `  ${name.padEnd(34)} ${cpuText(cpu)}   ${String(figures.jobsPerSecond).padStart(6)} jobs/s   enqueue→start p50 ${figures.p50StartMs} ms  p99 ${figures.p99StartMs} ms`,
  );
  return figures;
}

/** CPU per job and its parts, for the text output. */
function cpuText(c: CpuPerJob): string {
  const ms = (n: number): string => (n < 10 ? n.toFixed(3) : n.toFixed(1));
  return `${ms(c.totalMs).padStart(7)} ms CPU/job (supervisor ${ms(c.supervisorMs)}, sandboxes ${ms(c.sandboxesMs)}, Redis ${ms(c.redisMs)})`;
}

/** The inspector's CPU profiler on this process (the supervisor's main thread, where the per-job path runs). */
async function startProfile(): Promise<{ stop(file: string): Promise<void> }> {
  const { Session } = await import('node:inspector/promises');
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 100 });
  await session.post('Profiler.start');
  return {
    async stop(file) {
      const { profile } = await session.post('Profiler.stop');
      writeFileSync(file, JSON.stringify(profile));
      session.disconnect();
    },
  };
}

async function waitResult(queue: Queue, id: string): Promise<{ startedAt: number }> {
  for (;;) {
    const job: Job | undefined = await queue.getJob(id);
    if (job?.returnvalue) return job.returnvalue as { startedAt: number };
    if (job?.failedReason) throw new Error(`bench job failed: ${job.failedReason}`);
    await new Promise((r) => setImmediate(r));
  }
}

async function fleetRun(
  url: string,
  isolation: 'job' | 'pool',
  jobs: number,
  config = benchConfig(url, isolation),
  label = `fleet isolation="${isolation}"`,
  supervisor: { redisUrl?: string; sealAudit?: boolean } = {},
): Promise<RunFigures> {
  const queue = new Queue('noop', { connection: { url }, prefix: queuePrefix(config.redis.prefix, 'noop') });
  const figures = await measure(label, jobs, queue, async () => {
    const sup = new Supervisor({ config, ...supervisor });
    const listeners: (() => void)[] = [];
    sup.events.on('job:finished', () => listeners.forEach((l) => l()));
    await sup.start();
    return { onCompleted: (cb) => listeners.push(cb), stop: () => sup.stop(0) };
  });
  await queue.obliterate({ force: true });
  await queue.close();
  return figures;
}

/** The fleet pool with process sandboxes (the kind types with secrets run in): their baseline. */
function processPoolRun(url: string, jobs: number, label = 'fleet pool, process sandboxes'): Promise<RunFigures> {
  return fleetRun(url, 'pool', jobs, benchConfig(url, 'pool', { sandbox: 'process' }), label);
}

async function bullmqRun(
  url: string,
  mode: 'sandboxed' | 'sandboxed-process' | 'inline',
  jobs: number,
): Promise<RunFigures> {
  const prefix = `bench${++prefixSeq}`;
  const queue = new Queue('noop', { connection: { url }, prefix });
  const inline = async (): Promise<{ startedAt: number }> => ({ startedAt: now() });
  const label = {
    sandboxed: 'BullMQ sandboxed (worker threads)',
    'sandboxed-process': 'BullMQ sandboxed (child processes)',
    inline: 'BullMQ inline (no isolation)',
  }[mode];
  const figures = await measure(label, jobs, queue, async () => {
    const worker =
      mode === 'inline'
        ? new Worker('noop', inline, { connection: { url, maxRetriesPerRequest: null }, prefix, concurrency: C })
        : new Worker('noop', NOOP, {
            connection: { url, maxRetriesPerRequest: null },
            prefix,
            concurrency: C,
            useWorkerThreads: mode === 'sandboxed',
          });
    await worker.waitUntilReady();
    return { onCompleted: (cb) => worker.on('completed', cb), stop: () => worker.close() };
  });
  await queue.obliterate({ force: true });
  await queue.close();
  return figures;
}

type Boundary =
  | 'thread'
  | 'process'
  | 'process+permission'
  | 'process+permission+namespaces'
  | 'process+permission+namespaces+egress'
  | 'process+permission+namespaces+cgroup+rlimits'
  | 'process+permission+namespaces+cgroup+rlimits+seccomp';
const BOUNDARIES: Boundary[] = [
  'thread',
  'process',
  'process+permission',
  'process+permission+namespaces',
  'process+permission+namespaces+egress',
  'process+permission+namespaces+cgroup+rlimits',
  'process+permission+namespaces+cgroup+rlimits+seccomp',
];
/** The kernel's caps of the layer table's sandboxes (the job type defaults for a 128 MB heap). */
const BENCH_RESOURCES = { memoryLimitMb: 384, maxProcesses: 64, cpuWeight: 100, maxOpenFiles: 1024, maxFileSizeMb: 64 };

function sandboxOptions(boundary: Boundary, osLayer: OsLayer): Parameters<typeof Sandbox.start>[0] {
  const base = { processorPath: NOOP, jobType: 'noop', maxResultBytes: 1024, maxOldGenerationSizeMb: 128 };
  if (boundary === 'thread') return base;
  const off: OsLayer = { available: false, reason: 'bench', bwrapPath: osLayer.bwrapPath };
  const withNs = boundary.includes('namespaces');
  return {
    ...base,
    process: {
      osLayer: withNs ? osLayer : off,
      egress: boundary.endsWith('egress') ? 'any' : 'none',
      tmpSizeMb: 64,
      readPaths: [],
      forbiddenPaths: [],
      fleetAddresses: [],
      ...(boundary === 'process' ? { permissionModel: false } : {}),
      ...(boundary.includes('cgroup')
        ? {
            resources: {
              limits: BENCH_RESOURCES,
              layer: { ...probeResourceLimits('auto'), seccomp: boundary.endsWith('seccomp') },
            },
          }
        : {}),
    },
  };
}

/** Sandboxes of one boundary started (module loaded, ready) and destroyed per second, C at a time. */
async function rawSpawnRate(count: number, boundary: Boundary, osLayer: OsLayer): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next++ < count) {
        const sb = await Sandbox.start(sandboxOptions(boundary, osLayer));
        await sb.destroy();
      }
    }),
  );
  const rate = round(count / ((performance.now() - t0) / 1000), 0);
  say(`  ${`spawn+destroy: ${boundary}`.padEnd(44)} ${String(rate).padStart(7)} sandboxes/s`);
  return rate;
}

/**
 * Memory of a process and its descendants (bubblewrap and the node inside it), in kB: RSS counts
 * the Node binary's pages in full in every process; PSS shares them out among the processes that
 * map them, which is what one more sandbox really costs.
 */
function treeMemoryKb(pid: number): { rss: number; pss: number } {
  const out = { rss: 0, pss: 0 };
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    out.rss = Number(/^Rss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0);
    out.pss = Number(/^Pss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0);
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      for (const child of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8')
        .trim()
        .split(/\s+/)
        .filter(Boolean)) {
        const c = treeMemoryKb(Number(child));
        out.rss += c.rss;
        out.pss += c.pss;
      }
    }
  } catch {
    /* exited */
  }
  return out;
}

/** Memory per warm process sandbox (OS layer as available), after one job each. */
async function processSandboxRss(
  osLayer: OsLayer,
): Promise<{ rssMbPerSandbox: number; pssMbPerSandbox: number; sandboxes: number }> {
  const n = 4;
  const boxes = await Promise.all(
    Array.from({ length: n }, () =>
      Sandbox.start(
        sandboxOptions(osLayer.available ? 'process+permission+namespaces' : 'process+permission', osLayer),
      ),
    ),
  );
  try {
    for (const sb of boxes)
      await sb.run(
        { type: 'run', jobId: 'noop.1', jobType: 'noop', attempt: 1, data: {}, secretNames: [], secrets: [] },
        { timeoutMs: 5000, abortGraceMs: 100 },
      );
    await new Promise((r) => setTimeout(r, 300));
    const mem = boxes.map((sb) => treeMemoryKb(sb.pid!));
    const rss = round(mem.reduce((a, m) => a + m.rss, 0) / 1024 / n, 1);
    const pss = round(mem.reduce((a, m) => a + m.pss, 0) / 1024 / n, 1);
    say(`  ${'memory per warm process sandbox'.padEnd(44)} RSS ${rss} MB, PSS ${pss} MB`);
    return { rssMbPerSandbox: rss, pssMbPerSandbox: pss, sandboxes: n };
  } finally {
    await Promise.all(boxes.map((sb) => sb.destroy()));
  }
}

/** One autocannon run (its own process: the load generator does not share the API's event loop). */
async function autocannon(
  url: string,
  o: { connections: number; seconds: number; token: string; body: string; rate?: number },
): Promise<{ perSecond: number; p50Ms: number; p99Ms: number }> {
  const bin = createRequire(import.meta.url).resolve('autocannon');
  const args = [bin, '--json', '-c', String(o.connections), '-d', String(o.seconds), '-m', 'POST'];
  args.push('-H', `authorization=Bearer ${o.token}`, '-H', 'content-type=application/json', '-b', o.body);
  if (o.rate) args.push('-R', String(o.rate));
  const child = spawn(process.execPath, [...args, url], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  await new Promise((r) => child.once('exit', r));
  const r = JSON.parse(out) as {
    requests: { average: number };
    latency: { p50: number; p99: number };
    non2xx: number;
    errors: number;
  };
  if (r.non2xx || r.errors) throw new Error(`autocannon ${url}: ${r.non2xx} non-2xx answers, ${r.errors} errors`);
  return { perSecond: round(r.requests.average, 0), p50Ms: r.latency.p50, p99Ms: r.latency.p99 };
}

/**
 * Enqueue over HTTP, measured with autocannon (its own process) against the API as `fleet start
 * --role api` runs it, at 1, 16 and 64 connections, beside a no-op route of the same server (the
 * framework's ceiling); batches of 100 against in-process addBulk; latency at 50% and 90% of the
 * single-enqueue peak. In-process Queue.add and addBulk run from this process.
 */
async function enqueueRates(url: string): Promise<EnqueueFigures> {
  const token = 'bench-token-0123456789abcdef';
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-bench-api-'));
  const file = path.join(dir, 'fleet.config.json');
  const prefix = `bench${++prefixSeq}`;
  writeFileSync(
    file,
    JSON.stringify({
      redis: { prefix },
      dataDir: dir,
      api: { port: 0, bullBoard: { enabled: false } },
      producers: [{ name: 'bench', tokenSha256: sha256Hex(token), jobTypes: ['*'] }],
      jobTypes: [{ name: 'noop', processor: NOOP }],
    }),
  );
  const child = spawn(process.execPath, [path.join(path.dirname(NOOP), 'api-server.js'), file], {
    env: { ...process.env, REDIS_URL: url, FLEET_BENCH_TOKEN: token, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const config = benchConfig(url, 'pool', { prefix });
  const queue = new Queue('noop', { connection: { url }, prefix: queuePrefix(config.redis.prefix, 'noop') });
  try {
    const apiUrl = await new Promise<string>((resolve, reject) => {
      child.once('message', (m: { apiUrl: string }) => resolve(m.apiUrl));
      child.once('exit', (code) => reject(new Error(`bench API process exited (${code})`)));
    });
    const single = JSON.stringify({ n: 1 });
    const B = 100;
    const batch = JSON.stringify({ jobs: Array.from({ length: B }, () => ({ data: { n: 1 } })) });
    const run = (p: string, connections: number, body = single, rate?: number) =>
      autocannon(`${apiUrl}${p}`, { connections, seconds: 3, token, body, ...(rate ? { rate } : {}) });
    await run('/bench/noop', 16, single);
    await run('/v1/jobs/noop', 16, single);
    const perConnections: EnqueueFigures['http'] = [];
    for (const connections of [1, 16, 64]) {
      const noop = await run('/bench/noop', connections);
      const enqueue = await run('/v1/jobs/noop', connections);
      perConnections.push({ connections, noopPerSecond: noop.perSecond, enqueuePerSecond: enqueue.perSecond });
      say(
        `  ${`HTTP enqueue vs no-op route, ${connections} conn`.padEnd(34)} ${String(enqueue.perSecond).padStart(7)} vs ${noop.perSecond} req/s (${round(enqueue.perSecond / noop.perSecond)}×), p50 ${enqueue.p50Ms} ms p99 ${enqueue.p99Ms} ms`,
      );
    }
    const peak = Math.max(...perConnections.map((c) => c.enqueuePerSecond));
    const latency: EnqueueFigures['latencyAtLoad'] = [];
    for (const share of [0.5, 0.9]) {
      const r = await run('/v1/jobs/noop', 16, single, Math.round(peak * share));
      latency.push({ share, perSecond: r.perSecond, p50Ms: r.p50Ms, p99Ms: r.p99Ms });
      say(
        `  ${`HTTP enqueue at ${share * 100}% of peak`.padEnd(34)} ${String(r.perSecond).padStart(7)} req/s, p50 ${r.p50Ms} ms p99 ${r.p99Ms} ms`,
      );
    }
    const httpBatch = B * (await run('/v1/jobs/noop/batch', 16, batch)).perSecond;
    await queue.obliterate({ force: true });
    // In-process baselines, 16 in flight as the HTTP runs.
    const rate = async (n: number, op: () => Promise<unknown>): Promise<number> => {
      let left = n;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (left-- > 0) await op();
        }),
      );
      return round(n / ((performance.now() - t0) / 1000), 0);
    };
    await rate(200, () => queue.add('noop', { n: 1 }));
    const queueAdd = await rate(4000, () => queue.add('noop', { n: 1 }));
    const addBulk =
      B * (await rate(40, () => queue.addBulk(Array.from({ length: B }, () => ({ name: 'noop', data: { n: 1 } })))));
    say(`  ${'in-process Queue.add'.padEnd(34)} ${String(queueAdd).padStart(7)} jobs/s`);
    say(`  ${'in-process addBulk (100/call)'.padEnd(34)} ${String(addBulk).padStart(7)} jobs/s`);
    say(`  ${'HTTP batch (100/request, 16 conn)'.padEnd(34)} ${String(httpBatch).padStart(7)} jobs/s`);
    return {
      http: perConnections,
      latencyAtLoad: latency,
      queueAddPerSecond: queueAdd,
      addBulkPerSecond: addBulk,
      httpBatchPerSecond: httpBatch,
    };
  } finally {
    child.kill('SIGTERM');
    await queue.obliterate({ force: true }).catch(() => undefined);
    await queue.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

interface EnqueueFigures {
  http: { connections: number; noopPerSecond: number; enqueuePerSecond: number }[];
  latencyAtLoad: { share: number; perSecond: number; p50Ms: number; p99Ms: number }[];
  queueAddPerSecond: number;
  addBulkPerSecond: number;
  httpBatchPerSecond: number;
}

type SecretFigures = (RunFigures & { server: string }) | { skipped: string };

type BenchProvider = 'local' | 'vault' | 'kms' | 'secrets-manager';

/** `secrets` of a bench config reading through Vault with the AppRole `setupDevVault` made (its ids in the environment). */
function benchVaultSecrets(address: string): Record<string, unknown> {
  return {
    provider: 'vault',
    vault: { address, auth: 'approle', roleIdEnv: 'FLEET_BENCH_ROLE_ID', secretIdEnv: 'FLEET_BENCH_SECRET_ID' },
  };
}

/** Pool isolation, one secret fetched per job, from each provider (real servers where installed). */
async function secretRuns(
  url: string,
  jobs: number,
  only: readonly BenchProvider[] = ['local', 'vault', 'kms', 'secrets-manager'],
): Promise<Record<BenchProvider, SecretFigures>> {
  const { startVault, startKms, startSecretsManager, useLocalAwsCredentials, setupDevVault } =
    await import('../test/servers/test-servers.js');
  const value = Buffer.from('bench-secret-value-0123456789abcdef');
  const out = {} as Record<BenchProvider, SecretFigures>;

  out.local = only.includes('local')
    ? { ...(await localSecretRun(url, jobs)), server: 'local file' }
    : { skipped: 'not selected' };

  if (!only.includes('vault')) out.vault = { skipped: 'not selected' };
  const vault = only.includes('vault') ? await startVault() : null;
  if (!vault) out.vault ??= { skipped: 'not selected' };
  else if ('reason' in vault) out.vault = { skipped: vault.reason };
  else {
    try {
      const setup = await setupDevVault(vault, [['noop', ['bench-key']]]);
      process.env.FLEET_BENCH_ROLE_ID = setup.roleId;
      process.env.FLEET_BENCH_SECRET_ID = setup.secretId;
      await fetch(`${vault.url}/v1/secret/data/fleet/bench-key`, {
        method: 'POST',
        headers: { 'X-Vault-Token': vault.rootToken },
        body: JSON.stringify({ data: { value: value.toString() } }),
      });
      const secrets = benchVaultSecrets(vault.url);
      out.vault = {
        ...(await fleetRun(
          url,
          'pool',
          jobs,
          benchConfig(url, 'pool', { processor: WITH_SECRET, secrets }),
          'fleet pool + 1 secret (Vault)',
        )),
        server: vault.via,
      };
    } finally {
      await vault.release();
    }
  }

  useLocalAwsCredentials();
  const kms = only.includes('kms') ? await startKms() : null;
  if (!kms) out.kms = { skipped: 'not selected' };
  else if ('reason' in kms) out.kms = { skipped: kms.reason };
  else {
    const redis = new Redis(url);
    try {
      const client = new KMSClient({ region: 'us-east-1', endpoint: kms.url });
      const keyId = (await client.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
      client.destroy();
      const config = benchConfig(url, 'pool', {
        processor: WITH_SECRET,
        secrets: { provider: 'kms', kms: { keyId, endpoint: kms.url, region: 'us-east-1' } },
      });
      const writer = new KmsProvider({
        keyId,
        region: 'us-east-1',
        endpoint: kms.url,
        redis,
        keyPrefix: config.redis.prefix,
        keepVersions: 2,
        requestTimeoutMs: 5000,
      });
      await writer.write('bench-key', value);
      await writer.close();
      out.kms = { ...(await fleetRun(url, 'pool', jobs, config, 'fleet pool + 1 secret (KMS)')), server: kms.via };
    } finally {
      redis.disconnect();
      await kms.release();
    }
  }

  // moto on loopback stands in for AWS: it answers in about the time of its Python request
  // handling, with no network round trip to a region and no KMS decryption behind it.
  const sm = only.includes('secrets-manager') ? await startSecretsManager() : null;
  if (!sm) out['secrets-manager'] = { skipped: 'not selected' };
  else if ('reason' in sm) out['secrets-manager'] = { skipped: sm.reason };
  else {
    try {
      const secretsManager = { endpoint: sm.url, region: 'us-east-1', namePrefix: `bench${++prefixSeq}/` };
      const writer = new SecretsManagerProvider({ ...secretsManager, recoveryWindowDays: 0, requestTimeoutMs: 5000 });
      await writer.write('bench-key', value);
      await writer.close();
      const config = benchConfig(url, 'pool', {
        processor: WITH_SECRET,
        secrets: { provider: 'secrets-manager', secretsManager },
      });
      out['secrets-manager'] = {
        ...(await fleetRun(url, 'pool', jobs, config, 'fleet pool + 1 secret (Secrets Manager, moto)')),
        server: `${sm.via}, a stand-in for AWS`,
      };
    } finally {
      await sm.release();
    }
  }
  return out;
}

interface DynamicFigures {
  server: string;
  /** The process pool without secrets, and with one dynamic database credential per job, same run. */
  none: RunFigures;
  dynamic: RunFigures;
  /** One credential minted (job token + database user) and revoked (user dropped), measured on the provider. */
  mintMs: { p50: number; p99: number };
  revokeMs: { p50: number; p99: number };
}

/**
 * Per-job cost of a dynamic database credential (OpenBao's database engine, a real PostgreSQL):
 * the provider's mint and revoke, timed on their own, and the process pool with one such secret
 * per job against the same pool without secrets.
 */
async function dynamicSecretRun(url: string, jobs: number): Promise<DynamicFigures | { skipped: string }> {
  const { startVault, startPostgres, setupDevVault, setupDatabaseEngine } =
    await import('../test/servers/test-servers.js');
  const vault = await startVault();
  if ('reason' in vault) return { skipped: vault.reason };
  const pg = await startPostgres();
  if ('reason' in pg) {
    await vault.release();
    return { skipped: pg.reason };
  }
  try {
    const credsPath = await setupDatabaseEngine(vault, pg, 'bench');
    const setup = await setupDevVault(vault, [['noop', ['bench-key']]], [], new Map([['bench-key', credsPath]]));
    process.env.FLEET_BENCH_ROLE_ID = setup.roleId;
    process.env.FLEET_BENCH_SECRET_ID = setup.secretId;
    const secrets = {
      ...benchVaultSecrets(vault.url),
      items: { 'bench-key': { dynamic: { path: credsPath } } },
    };
    const config = benchConfig(url, 'pool', { processor: WITH_SECRET, secrets });
    const { makeProvider } = await import('../src/secrets/providers.js');
    const provider = await makeProvider('vault', config, { logger: silentLogger });
    const mint: number[] = [];
    const revoke: number[] = [];
    try {
      for (let i = 0; i < 60; i++) {
        const lease = await provider.lease({
          jobId: `bench-${i}`,
          jobType: 'noop',
          names: ['bench-key'],
          ttlMs: 30_000,
        });
        const t0 = performance.now();
        (await lease.read('bench-key')).value.fill(0);
        const t1 = performance.now();
        await lease.release();
        const t2 = performance.now();
        if (i >= 10) {
          mint.push(t1 - t0);
          revoke.push(t2 - t1);
        }
      }
    } finally {
      await provider.close();
    }
    const q = (xs: number[]): { p50: number; p99: number } => {
      const sorted = [...xs].sort((a, b) => a - b);
      return { p50: round(quantile(sorted, 0.5)), p99: round(quantile(sorted, 0.99)) };
    };
    const none = await processPoolRun(url, jobs, 'fleet pool, process sandboxes');
    const dynamic = await fleetRun(url, 'pool', jobs, config, 'fleet pool + 1 dynamic DB credential');
    return { server: `${vault.via}; ${pg.via}`, none, dynamic, mintMs: q(mint), revokeMs: q(revoke) };
  } finally {
    await vault.release();
    await pg.release();
  }
}

/** The process pool with one secret per job from the local store (the store made for the run). */
async function localSecretRun(url: string, jobs: number): Promise<RunFigures> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-bench-secrets-'));
  try {
    const local = new LocalProvider({
      file: path.join(dataDir, 'secrets.enc.json'),
      keyFile: path.join(dataDir, 'master.key'),
      masterKeyEnv: 'FLEET_BENCH_NO_ENV',
      keepVersions: 2,
    });
    await local.write('bench-key', Buffer.from('bench-secret-value-0123456789abcdef'));
    return await fleetRun(
      url,
      'pool',
      jobs,
      benchConfig(url, 'pool', { processor: WITH_SECRET, dataDir, secrets: { provider: 'local' } }),
      'fleet pool + 1 secret (local)',
    );
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** One ratio from alternating pairs: throughput (contender ÷ baseline) and CPU per job (contender ÷ baseline). */
interface Paired {
  /** Throughput ratio, median of the pairs (higher is better for the contender). */
  ratio: number;
  /** [baseline, contender] jobs per second. */
  pairs: [number, number][];
  cpu: {
    /** CPU-per-job ratio, median of the pairs (lower is better for the contender). */
    ratio: number;
    /** [baseline, contender] CPU ms per job. */
    pairs: [number, number][];
    /** Both sides' CPU per job and its parts, from the pair that gave the median. */
    baseline: CpuPerJob;
    contender: CpuPerJob;
  };
}

/**
 * A ratio that matters, measured as the median of `rounds` back-to-back pairs of runs: single
 * runs on this 2-core machine swing by ±30%, adjacent ones drift less. CPU per job swings far
 * less than throughput (it does not count the time a run waits for the cores), and is kept too.
 */
async function pairedRatio(
  baseline: () => Promise<Pick<RunFigures, 'jobsPerSecond' | 'cpu'>>,
  contender: () => Promise<Pick<RunFigures, 'jobsPerSecond' | 'cpu'>>,
  rounds = ROUNDS,
): Promise<Paired> {
  const runs: [Pick<RunFigures, 'jobsPerSecond' | 'cpu'>, Pick<RunFigures, 'jobsPerSecond' | 'cpu'>][] = [];
  for (let i = 0; i < rounds; i++) {
    // Alternating order (AB, BA, AB): a warm-up or drift within a pair favours neither side.
    if (i % 2 === 0) runs.push([await baseline(), await contender()]);
    else {
      const c = await contender();
      runs.push([await baseline(), c]);
    }
  }
  const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)] ?? NaN;
  const cpuRatios = runs.map(([a, b]) => b.cpu.totalMs / a.cpu.totalMs);
  const cpuMedian = median(cpuRatios);
  const at = runs[cpuRatios.indexOf(cpuMedian)] ?? runs[0]!;
  const out: Paired = {
    ratio: round(median(runs.map(([a, b]) => b.jobsPerSecond / a.jobsPerSecond))),
    pairs: runs.map(([a, b]) => [a.jobsPerSecond, b.jobsPerSecond]),
    cpu: {
      ratio: round(cpuMedian),
      pairs: runs.map(([a, b]) => [a.cpu.totalMs, b.cpu.totalMs]),
      baseline: at[0].cpu,
      contender: at[1].cpu,
    },
  };
  say(
    `  → CPU/job ratio ${out.cpu.ratio} (pairs ${out.cpu.pairs.map(([a, b]) => round(b / a)).join(', ')}), throughput ratio ${out.ratio}`,
  );
  return out;
}

/**
 * The cost of least privilege, on one Redis that has the fleet's ACL users: enqueue (Queue.add)
 * as the `api` user vs as the admin, and pool jobs with one local secret (one audit record each)
 * run by the `worker` user with the audit MAC chain vs the admin without it. Each contender runs
 * twice, interleaved, and the mean is kept (single runs on this machine swing by ±30%).
 */
async function aclAndChainRuns(jobs: number): Promise<{
  enqueueAdminPerSecond: number;
  enqueueApiUserPerSecond: number;
  jobsAdminUnsealedPerSecond: number;
  jobsRoleUsersChainPerSecond: number;
}> {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-bench-acl-'));
  const prefix = 'benchacl';
  const users = ensureEmbeddedUsers(dir);
  const server = await startEmbeddedRedis({
    dataDir: path.join(dir, 'redis'),
    persistent: false,
    acl: { prefix, users },
  });
  const admin = urlWithCredential(server.url, users.admin);
  const as = (role: 'api' | 'worker'): string => urlWithCredential(server.url, users.roles[role]!);
  try {
    const enqueueRate = async (url: string): Promise<number> => {
      const queue = new Queue('noop', { connection: { url }, prefix: queuePrefix(prefix, 'noop') });
      const run = async (n: number): Promise<number> => {
        let left = n;
        const t0 = performance.now();
        await Promise.all(
          Array.from({ length: 16 }, async () => {
            while (left-- > 0) await queue.add('noop', { n: 1 });
          }),
        );
        return n / ((performance.now() - t0) / 1000);
      };
      await run(200);
      const rate = round(await run(4000), 0);
      await queue.obliterate({ force: true });
      await queue.close();
      return rate;
    };
    const mean = (xs: number[]): number => round(xs.reduce((a, b) => a + b, 0) / xs.length, 0);
    const enqueueAdmin: number[] = [];
    const enqueueApi: number[] = [];
    for (let i = 0; i < 2; i++) {
      enqueueAdmin.push(await enqueueRate(admin));
      enqueueApi.push(await enqueueRate(as('api')));
    }
    const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-bench-acl-data-'));
    await new LocalProvider({
      file: path.join(dataDir, 'secrets.enc.json'),
      keyFile: path.join(dataDir, 'master.key'),
      masterKeyEnv: 'FLEET_BENCH_NO_ENV',
      keepVersions: 2,
    }).write('bench-key', Buffer.from('bench-secret-value-0123456789abcdef'));
    const config = benchConfig(server.url, 'pool', {
      processor: WITH_SECRET,
      dataDir,
      prefix,
      secrets: { provider: 'local' },
    });
    const jobsAdmin: number[] = [];
    const jobsRoles: number[] = [];
    for (let i = 0; i < 2; i++) {
      jobsAdmin.push(
        (
          await fleetRun(admin, 'pool', jobs, config, 'pool + 1 secret, admin, no MAC chain', {
            redisUrl: admin,
            sealAudit: false,
          })
        ).jobsPerSecond,
      );
      jobsRoles.push(
        (
          await fleetRun(as('api'), 'pool', jobs, config, 'pool + 1 secret, role users + chain', {
            redisUrl: as('worker'),
            sealAudit: true,
          })
        ).jobsPerSecond,
      );
    }
    rmSync(dataDir, { recursive: true, force: true });
    const out = {
      enqueueAdminPerSecond: mean(enqueueAdmin),
      enqueueApiUserPerSecond: mean(enqueueApi),
      jobsAdminUnsealedPerSecond: mean(jobsAdmin),
      jobsRoleUsersChainPerSecond: mean(jobsRoles),
    };
    say(
      `  ${'Queue.add as admin / as api user'.padEnd(34)} ${out.enqueueAdminPerSecond} / ${out.enqueueApiUserPerSecond} jobs/s (mean of 2 each)`,
    );
    say(
      `  ${'1-secret jobs: admin unsealed / roles + chain'.padEnd(34)} ${out.jobsAdminUnsealedPerSecond} / ${out.jobsRoleUsersChainPerSecond} jobs/s (mean of 2 each)`,
    );
    return out;
  } finally {
    await server.release();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Secret injection's cost per proxied HTTPS request, p50 on loopback: the same request (keep-alive,
 * sequential) through the egress proxy as a plain CONNECT tunnel, through the proxy terminating
 * TLS without a placeholder in it, and with a placeholder swapped for the value.
 */
async function injectionOverhead(requests: number): Promise<{
  tunnelP50Ms: number;
  tunnelP99Ms: number;
  terminatedP50Ms: number;
  injectP50Ms: number;
  injectP99Ms: number;
  overheadP50Ms: number;
}> {
  const { EgressProxy } = await import('../src/workers/egress-proxy.js');
  const { EgressCa } = await import('../src/workers/egress-ca.js');
  const { InjectionRegistry } = await import('../src/secrets/injection.js');
  const https = await import('node:https');
  const upstreamCa = await EgressCa.load(mkdtempSync(path.join(tmpdir(), 'fleet-bench-upstream-ca-')));
  const fleetCa = await EgressCa.load(mkdtempSync(path.join(tmpdir(), 'fleet-bench-egress-ca-')));
  const server = https.createServer({ ...(await upstreamCa.leafPem('127.0.0.1')), keepAlive: true }, (req, res) => {
    req.resume();
    req.on('end', () => res.end('{"ok":true}'));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  const egress = [`127.0.0.1:${port}`];
  const registry = new InjectionRegistry();
  const placeholder = registry.issue(
    'bench.1',
    'bench',
    'bench-key',
    Buffer.from('sk-bench-0123456789abcdef0123456789'),
    { hosts: egress, header: 'authorization', format: 'Bearer {value}', body: false },
  );
  const tunnel = new EgressProxy({ egress, onRefused: () => undefined });
  const terminating = new EgressProxy({
    egress,
    onRefused: () => undefined,
    inject: {
      ca: fleetCa,
      registry,
      currentJob: () => 'bench.1',
      upstreamCa: upstreamCa.certPem,
      maxBodyBytes: 1 << 20,
      onInjected: () => undefined,
      onRefused: () => undefined,
    },
  });
  const urls = { tunnel: await tunnel.listen(0), terminating: await terminating.listen(0) };
  const run = async (proxyUrl: string, ca: string, headers: Record<string, string>): Promise<number[]> => {
    const agent = new https.Agent({
      keepAlive: true,
      maxSockets: 1,
      ca,
      proxyEnv: { HTTPS_PROXY: proxyUrl },
    } as ConstructorParameters<typeof https.Agent>[0]);
    const once = (): Promise<number> =>
      new Promise((resolve, reject) => {
        const t0 = performance.now();
        const req = https.request(`https://127.0.0.1:${port}/v1/charges`, { agent, headers }, (res) => {
          res.resume();
          res.on('end', () =>
            res.statusCode === 200 ? resolve(performance.now() - t0) : reject(new Error(`HTTP ${res.statusCode}`)),
          );
        });
        req.on('error', reject);
        req.end();
      });
    for (let i = 0; i < 50; i++) await once();
    const lat: number[] = [];
    for (let i = 0; i < requests; i++) lat.push(await once());
    agent.destroy();
    return lat.sort((a, b) => a - b);
  };
  try {
    const auth = { authorization: `Bearer ${placeholder}` };
    const plainAuth = { authorization: 'Bearer not-a-secret-0123456789' };
    const t = await run(urls.tunnel, upstreamCa.certPem, plainAuth);
    const m = await run(urls.terminating, fleetCa.certPem, plainAuth);
    const i = await run(urls.terminating, fleetCa.certPem, auth);
    const out = {
      tunnelP50Ms: round(quantile(t, 0.5), 3),
      tunnelP99Ms: round(quantile(t, 0.99), 3),
      terminatedP50Ms: round(quantile(m, 0.5), 3),
      injectP50Ms: round(quantile(i, 0.5), 3),
      injectP99Ms: round(quantile(i, 0.99), 3),
      overheadP50Ms: round(quantile(i, 0.5) - quantile(t, 0.5), 3),
    };
    say(
      `  ${'HTTPS via proxy: tunnel / terminated / injected'.padEnd(34)} p50 ${out.tunnelP50Ms} / ${out.terminatedP50Ms} / ${out.injectP50Ms} ms (p99 ${out.tunnelP99Ms} / ${out.injectP99Ms} ms), ${requests} requests each`,
    );
    return out;
  } finally {
    registry.endJob('bench.1');
    await tunnel.close();
    await terminating.close();
    server.close();
  }
}

/**
 * RSS of a real, idle `fleet start --role <role>` process (demo config: one pool type, so a worker
 * holds one warm thread sandbox), 4 s after start: what each role loads.
 */
async function idleRoleRss(url: string, role: 'api' | 'worker' | 'scheduler'): Promise<number> {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-bench-'));
  const file = path.join(dir, 'fleet.config.json');
  writeFileSync(
    file,
    JSON.stringify({
      redis: { prefix: `bench${++prefixSeq}` },
      dataDir: dir,
      api: { port: 0 },
      supervisor: { metricsPort: 0 },
      jobTypes: [{ name: 'noop', processor: NOOP, isolation: 'pool', concurrency: 4 }],
    }),
  );
  const child = spawn(
    process.execPath,
    [path.resolve(path.dirname(NOOP), '..', '..', 'bin', 'fleet.js'), 'start', '--role', role, '--config', file],
    { env: { ...process.env, REDIS_URL: url, LOG_LEVEL: 'warn' }, stdio: 'ignore' },
  );
  await new Promise((r) => setTimeout(r, 4000));
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  // The anonymous part is this process's own; the rest is the node binary's pages, shared by every Node process.
  const anonKb = Number(/RssAnon:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
  const rssMb = round(rssKb / 1024, 1);
  say(`  ${`idle ${role} RSS`.padEnd(34)} ${String(rssMb).padStart(7)} MB (anonymous ${round(anonKb / 1024, 1)} MB)`);
  return rssMb;
}

async function idleRolesRss(url: string): Promise<Record<'api' | 'worker' | 'scheduler', number>> {
  return {
    api: await idleRoleRss(url, 'api'),
    worker: await idleRoleRss(url, 'worker'),
    scheduler: await idleRoleRss(url, 'scheduler'),
  };
}

/**
 * The floor a fresh process sandbox is measured against: one bare `node -e 0` started inside the
 * same bubblewrap namespaces and mounts a sandbox gets (no permission flags, no fleet code, no
 * channel), `count` of them, C at a time; CPU of every process involved, per start.
 */
async function namespacedNodeStart(
  count: number,
  osLayer: OsLayer,
): Promise<Pick<RunFigures, 'jobsPerSecond' | 'cpu'>> {
  const tmp = mkdtempSync(path.join(tmpdir(), 'fleet-bench-floor-'));
  try {
    const cmd = processSandboxCommand({
      entry: SANDBOX_ENTRY,
      processorPath: NOOP,
      readPaths: [],
      tmpDir: tmp,
      tmpSizeMb: 64,
      maxOldGenerationSizeMb: 128,
      egress: 'none',
      egressSocket: null,
      proxyUrl: null,
      osLayer,
      forbiddenPaths: [],
    });
    const node = process.execPath;
    const args = osLayer.available ? [...cmd.args.slice(0, cmd.args.indexOf('--') + 1), node, '-e', '0'] : ['-e', '0'];
    const command = osLayer.available ? cmd.command : node;
    const once = (): Promise<void> =>
      new Promise((resolve, reject) => {
        const child = spawn(command, args, { env: cmd.env, stdio: 'ignore' });
        child.once('error', reject);
        child.once('exit', (code) =>
          code === 0 ? resolve() : reject(new Error(`${command} ${args.join(' ')}: exit ${code}`)),
        );
      });
    await once();
    const cpu0 = meter.read();
    const t0 = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: C }, async () => {
        while (next++ < count) await once();
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const cpu = cpuPerJob(cpu0, meter.read(), count);
    const jobsPerSecond = round(count / seconds, 0);
    say(
      `  ${(osLayer.available ? 'floor: bare node -e 0 in bubblewrap' : 'floor: bare node -e 0').padEnd(34)} ${cpuText(cpu).replace('CPU/job', 'CPU/start')}   ${String(jobsPerSecond).padStart(6)} starts/s`,
    );
    return { jobsPerSecond, cpu };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

type PairedKey = 'poolVsBullmqInline' | 'oneLocalSecretVsNone' | 'processPoolVsBullmqProcesses' | 'processJobVsFloor';

/**
 * The ratios with targets, each from back-to-back pairs (pairedRatio): the thread pool against
 * BullMQ inline, one local secret against none (process pools), the process pool against BullMQ's
 * child processes, and a fresh process sandbox per job against the bare namespaced Node start.
 */
async function pairedRuns(
  url: string,
  osLayer: OsLayer,
  which: readonly PairedKey[] = [
    'poolVsBullmqInline',
    'oneLocalSecretVsNone',
    'processPoolVsBullmqProcesses',
    'processJobVsFloor',
  ],
): Promise<Partial<Record<PairedKey, Paired>>> {
  const out: Partial<Record<PairedKey, Paired>> = {};
  const processJobs = Math.min(SPAWN_JOBS, 100);
  const runs: Record<
    PairedKey,
    [
      string,
      () => Promise<Pick<RunFigures, 'jobsPerSecond' | 'cpu'>>,
      () => Promise<Pick<RunFigures, 'jobsPerSecond' | 'cpu'>>,
    ]
  > = {
    poolVsBullmqInline: [
      'thread pool vs BullMQ inline',
      () => bullmqRun(url, 'inline', JOBS),
      () => fleetRun(url, 'pool', JOBS),
    ],
    oneLocalSecretVsNone: [
      '1 local secret vs none (process pools)',
      () => processPoolRun(url, JOBS),
      () => localSecretRun(url, JOBS),
    ],
    processPoolVsBullmqProcesses: [
      'process pool vs BullMQ child processes',
      () => bullmqRun(url, 'sandboxed-process', JOBS),
      () => processPoolRun(url, JOBS),
    ],
    processJobVsFloor: [
      'process job vs bare namespaced Node',
      () => namespacedNodeStart(Math.min(processJobs, 60), osLayer),
      () =>
        fleetRun(
          url,
          'job',
          processJobs,
          benchConfig(url, 'job', { sandbox: 'process' }),
          'fleet job, process sandboxes',
        ),
    ],
  };
  for (const key of which) {
    const [what, baseline, contender] = runs[key];
    say(`paired runs: ${what} (baseline and contender, order alternating) × ${ROUNDS}:`);
    out[key] = await pairedRatio(baseline, contender);
  }
  return out;
}

/** `--pairs a,b`: paired ratios by name; an unknown one is refused with the list. */
function pairedKeys(list: string): PairedKey[] {
  const known = Object.keys(CPU_TARGETS);
  return list.split(',').map((k) => {
    if (!known.includes(k)) throw new Error(`--pairs: no paired ratio "${k}". Fix: one of ${known.join(', ')}.`);
    return k as PairedKey;
  });
}

/** `ratios.cpu.*`: contender's CPU per job ÷ baseline's (lower is better), each the median of its pairs. */
function cpuRatios(paired: Partial<Record<PairedKey, Paired>>): Partial<Record<PairedKey, number>> {
  return Object.fromEntries(Object.entries(paired).map(([k, v]) => [k, v.cpu.ratio]));
}

/** The CPU targets of issue 25 against `ratios.cpu`. */
const CPU_TARGETS: Record<PairedKey, number> = {
  poolVsBullmqInline: 1.25,
  processJobVsFloor: 1.3,
  processPoolVsBullmqProcesses: 0.8,
  oneLocalSecretVsNone: 1.15,
};
function cpuTargets(cpu: Partial<Record<PairedKey, number>>): Record<string, { target: string; met: boolean }> {
  return Object.fromEntries(
    Object.entries(cpu).map(([k, v]) => [
      `cpu.${k}`,
      { target: `≤ ${CPU_TARGETS[k as PairedKey]}`, met: v <= CPU_TARGETS[k as PairedKey] },
    ]),
  );
}

async function main(): Promise<void> {
  try {
    await benchmarks();
  } finally {
    // The sandbox spawner is this process's child, in the cgroup the meter removes.
    await stopSpawner();
    await meter.release();
  }
}

async function benchmarks(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-bench-redis-'));
  const redis = await startEmbeddedRedis({ dataDir: dir, persistent: false });
  const r = new Redis(redis.url);
  const redisVersion = /redis_version:(\S+)/.exec(await r.info('server'))?.[1];
  r.disconnect();
  say(
    `fleet bench: ${JOBS} no-op jobs per contender (${SPAWN_JOBS} for job isolation), concurrency ${C}, Node ${process.version}, Redis ${redisVersion}, ${(await import('node:os')).cpus().length} cores; CPU from ${meter.source}; this process ${Math.round(process.memoryUsage().rss / 1e6)} MB RSS${ballast.length ? ` (${ballast.length} MB of it ballast)` : ''}`,
  );
  try {
    if (args.only === 'pool' || args.only === 'cpu') {
      // `pool`: the per-job path alone (for profiling): BullMQ inline vs the thread pool, process pools
      // with and without one local secret, and against BullMQ's child processes. `cpu`: the same and
      // a fresh process sandbox per job against the bare namespaced Node start: every CPU target.
      const osLayer = await probeOsLayer('auto');
      const paired = await pairedRuns(
        redis.url,
        osLayer,
        args.only === 'pool'
          ? ['poolVsBullmqInline', 'oneLocalSecretVsNone', 'processPoolVsBullmqProcesses']
          : args.pairs
            ? pairedKeys(args.pairs)
            : undefined,
      );
      const cpu = cpuRatios(paired);
      const ratios = { ...Object.fromEntries(Object.entries(paired).map(([k, v]) => [k, v.ratio])), cpu };
      const cpuMsPerJob = Object.fromEntries(
        Object.entries(paired).flatMap(([k, v]) => [
          [`${k}.baseline`, v.cpu.baseline.totalMs],
          [`${k}.contender`, v.cpu.contender.totalMs],
        ]),
      );
      const targets = cpuTargets(cpu);
      if (args.json)
        process.stdout.write(
          `${JSON.stringify({ node: process.version, cpuSource: meter.source, cpuMsPerJob, paired, ratios, targets })}\n`,
        );
      else {
        say(`ratios: ${JSON.stringify(ratios)} (CPU from ${meter.source})`);
        for (const [k, v] of Object.entries(targets))
          say(`  ${k.padEnd(36)} ${v.target.padEnd(6)} ${v.met ? 'met' : 'NOT met'}`);
      }
      return;
    }
    if (args.only === 'layers') {
      // The price of the kernel's limits per sandbox start: namespaces alone, + cgroup and rlimits,
      // + the seccomp filter, in alternating rounds (median of 3 each), OS layer required.
      const osLayer = await probeOsLayer('auto');
      const kernel = probeResourceLimits('auto');
      if (!osLayer.available || !kernel.cgroups) {
        say(`layers: skipped (${osLayer.reason || kernel.reasons.join('; ')})`);
        return;
      }
      const compared: Boundary[] = [
        'process+permission+namespaces',
        'process+permission+namespaces+cgroup+rlimits',
        'process+permission+namespaces+cgroup+rlimits+seccomp',
      ];
      const runs = Object.fromEntries(compared.map((b) => [b, [] as number[]])) as Record<Boundary, number[]>;
      for (let round3 = 0; round3 < 3; round3++)
        for (const b of compared) runs[b].push(await rawSpawnRate(100, b, osLayer));
      const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[1] ?? NaN;
      const ms = (b: Boundary): number => 1000 / median(runs[b]);
      const layerCostMs = {
        cgroupAndRlimits: round(ms(compared[1] ?? 'thread') - ms(compared[0] ?? 'thread')),
        seccomp: round(ms(compared[2] ?? 'thread') - ms(compared[1] ?? 'thread')),
        kernelLimits: round(ms(compared[2] ?? 'thread') - ms(compared[0] ?? 'thread')),
      };
      say(
        `spawn cost of the kernel's limits (ms per sandbox, ${C} at a time, median of 3): ${JSON.stringify(layerCostMs)} (target: kernelLimits ≤ 2)`,
      );
      if (args.json)
        process.stdout.write(`${JSON.stringify({ node: process.version, spawnRates: runs, layerCostMs })}\n`);
      return;
    }
    if (args.only === 'secrets' || args.only === 'secrets-manager') {
      // Secrets are fetched before the processor starts: their cost is the enqueue→start latency
      // over a process pool without secrets, measured in the same run.
      const none = await processPoolRun(redis.url, SECRET_JOBS, 'fleet pool, process sandboxes');
      const secrets = await secretRuns(
        redis.url,
        SECRET_JOBS,
        args.only === 'secrets-manager' ? ['secrets-manager'] : undefined,
      );
      const overhead = Object.fromEntries(
        Object.entries(secrets).map(([k, f]) => [k, 'p50StartMs' in f ? round(f.p50StartMs - none.p50StartMs) : NaN]),
      );
      say(`secret overhead p50 enqueue→start vs none: ${JSON.stringify(overhead)}`);
      if (args.json) process.stdout.write(`${JSON.stringify({ node: process.version, none, secrets, overhead })}\n`);
      return;
    }
    if (args.only === 'dynamic') {
      const dyn = await dynamicSecretRun(redis.url, Math.min(SECRET_JOBS, 300));
      if ('skipped' in dyn) say(`dynamic credentials skipped: ${dyn.skipped}`);
      else
        say(
          `dynamic DB credential per job: mint p50 ${dyn.mintMs.p50} ms (p99 ${dyn.mintMs.p99}), revoke p50 ${dyn.revokeMs.p50} ms (p99 ${dyn.revokeMs.p99}); ` +
            `pool throughput ${dyn.dynamic.jobsPerSecond} vs ${dyn.none.jobsPerSecond} jobs/s without secrets, p50 start +${round(dyn.dynamic.p50StartMs - dyn.none.p50StartMs)} ms`,
        );
      if (args.json) process.stdout.write(`${JSON.stringify({ node: process.version, dynamic: dyn })}\n`);
      return;
    }
    if (args.only === 'at-rest') {
      const atRest = await atRestRuns(redis.url, { processor: NOOP, jobs: SECRET_JOBS, concurrency: C, say });
      if (args.json) process.stdout.write(`${JSON.stringify({ node: process.version, atRest })}\n`);
      return;
    }
    if (args.only === 'enqueue') {
      const enqueue = await enqueueRates(redis.url);
      if (args.json) process.stdout.write(`${JSON.stringify({ node: process.version, enqueue })}\n`);
      return;
    }
    if (args.only === 'roles') {
      const rss = await idleRolesRss(redis.url);
      if (args.json) process.stdout.write(`${JSON.stringify({ node: process.version, rssPerRole: rss })}\n`);
      return;
    }
    if (args.only === 'injection') {
      const inj = await injectionOverhead(1000);
      if (args.json) process.stdout.write(`${JSON.stringify({ node: process.version, injection: inj })}\n`);
      else say(`injection overhead p50: ${inj.overheadP50Ms} ms (target ≤ 2)`);
      return;
    }
    if (args.only === 'least-privilege') {
      const lp = await aclAndChainRuns(SECRET_JOBS);
      const ratios = {
        aclEnqueueVsNone: round(lp.enqueueApiUserPerSecond / lp.enqueueAdminPerSecond),
        aclAndAuditChainJobsVsNone: round(lp.jobsRoleUsersChainPerSecond / lp.jobsAdminUnsealedPerSecond),
      };
      if (args.json)
        process.stdout.write(
          `${JSON.stringify({ node: process.version, redis: redisVersion, leastPrivilege: lp, ratios })}\n`,
        );
      else say(`ratios: ${JSON.stringify(ratios)}`);
      return;
    }
    const osLayer = await probeOsLayer('auto');
    say(`OS layer: ${osLayer.available ? 'available (bubblewrap namespaces)' : `unavailable: ${osLayer.reason}`}`);
    const bullmqInline = await bullmqRun(redis.url, 'inline', JOBS);
    const bullmqSandboxed = await bullmqRun(redis.url, 'sandboxed', JOBS);
    const bullmqProcesses = await bullmqRun(redis.url, 'sandboxed-process', JOBS);
    const pool = await fleetRun(redis.url, 'pool', JOBS);
    const processPool = await processPoolRun(redis.url, JOBS, 'fleet pool, process sandboxes');
    const processPoolNoOs = await fleetRun(
      redis.url,
      'pool',
      JOBS,
      benchConfig(redis.url, 'pool', { sandbox: 'process', osLayer: 'off' }),
      'fleet pool, process, no OS layer',
    );
    const spawnRates = {} as Record<Boundary, number>;
    const kernel = probeResourceLimits('auto');
    for (const b of BOUNDARIES)
      if ((osLayer.available || !b.includes('namespaces')) && (kernel.cgroups || !b.includes('cgroup')))
        spawnRates[b] = await rawSpawnRate(Math.min(SPAWN_JOBS, b === 'thread' ? SPAWN_JOBS : 200), b, osLayer);
    const spawnRate = spawnRates.thread;
    const job = await fleetRun(redis.url, 'job', SPAWN_JOBS);
    const processBoundary: Boundary = osLayer.available ? 'process+permission+namespaces' : 'process+permission';
    const processJobs = Math.min(SPAWN_JOBS, 200);
    const processJob = await fleetRun(
      redis.url,
      'job',
      processJobs,
      benchConfig(redis.url, 'job', { sandbox: 'process' }),
      'fleet job, process sandboxes',
    );
    const processRss = await processSandboxRss(osLayer);
    // Types with secrets run in process sandboxes: their baseline is a process pool of the same size.
    const poolSameSize =
      SECRET_JOBS === JOBS
        ? processPool
        : await processPoolRun(redis.url, SECRET_JOBS, `fleet pool, process (${SECRET_JOBS} jobs)`);
    const secrets = await secretRuns(redis.url, SECRET_JOBS);
    const paired = await pairedRuns(redis.url, osLayer);
    const enqueue = await enqueueRates(redis.url);
    const leastPrivilege = await aclAndChainRuns(SECRET_JOBS);
    const injection = await injectionOverhead(1000);
    const rssPerRole = await idleRolesRss(redis.url);
    const idle = { rssMb: rssPerRole.worker, sandboxes: 1 };
    const httpVsNoop = (connections: number): number => {
      const h = enqueue.http.find((x) => x.connections === connections);
      return h ? round(h.enqueuePerSecond / h.noopPerSecond) : NaN;
    };
    const ratios = {
      processPoolVsBullmqThreads: round(processPool.jobsPerSecond / bullmqSandboxed.jobsPerSecond),
      processPoolVsBullmqProcesses: round(processPool.jobsPerSecond / bullmqProcesses.jobsPerSecond),
      processJobVsRawSpawnRate: round(processJob.jobsPerSecond / spawnRates[processBoundary]),
      poolVsBullmqSandboxed: round(pool.jobsPerSecond / bullmqSandboxed.jobsPerSecond),
      poolVsBullmqInline: paired.poolVsBullmqInline?.ratio ?? NaN,
      jobVsRawSpawnRate: round(job.jobsPerSecond / spawnRate),
      httpSingleVsNoopRoute1: httpVsNoop(1),
      httpSingleVsNoopRoute16: httpVsNoop(16),
      httpSingleVsNoopRoute64: httpVsNoop(64),
      httpBatchVsAddBulk: round(enqueue.httpBatchPerSecond / enqueue.addBulkPerSecond),
      oneLocalSecretVsNone: paired.oneLocalSecretVsNone?.ratio ?? NaN,
      aclEnqueueVsNone: round(leastPrivilege.enqueueApiUserPerSecond / leastPrivilege.enqueueAdminPerSecond),
      aclAndAuditChainJobsVsNone: round(
        leastPrivilege.jobsRoleUsersChainPerSecond / leastPrivilege.jobsAdminUnsealedPerSecond,
      ),
      /** CPU per job, contender ÷ baseline, median of alternating pairs (the primary figures). */
      cpu: cpuRatios(paired),
    };
    const secretCpu = (f: SecretFigures): number => ('cpu' in f ? f.cpu.totalMs : NaN);
    const cpuMsPerJob = {
      bullmqInline: bullmqInline.cpu.totalMs,
      bullmqSandboxed: bullmqSandboxed.cpu.totalMs,
      bullmqProcesses: bullmqProcesses.cpu.totalMs,
      pool: pool.cpu.totalMs,
      processPool: processPool.cpu.totalMs,
      processPoolNoOs: processPoolNoOs.cpu.totalMs,
      job: job.cpu.totalMs,
      processJob: processJob.cpu.totalMs,
      secretLocal: secretCpu(secrets.local),
      secretVault: secretCpu(secrets.vault),
      secretKms: secretCpu(secrets.kms),
      /** The floor: one bare `node -e 0` start in the same namespaces (the median pair's). */
      namespacedNodeStart: paired.processJobVsFloor?.cpu.baseline.totalMs ?? NaN,
    };
    // Secrets are fetched before the processor starts, so their cost shows in enqueue→start latency.
    const overhead = (f: SecretFigures): number =>
      'p50StartMs' in f ? round(f.p50StartMs - poolSameSize.p50StartMs) : NaN;
    const secretOverheadP50Ms = {
      local: overhead(secrets.local),
      vault: overhead(secrets.vault),
      kms: overhead(secrets.kms),
      secretsManager: overhead(secrets['secrets-manager']),
    };
    say(
      `secret overhead per job (p50 enqueue→start vs none): local ${secretOverheadP50Ms.local} ms, Vault ${secretOverheadP50Ms.vault} ms, KMS ${secretOverheadP50Ms.kms} ms, Secrets Manager (moto) ${secretOverheadP50Ms.secretsManager} ms`,
    );
    // Spawn cost of each layer: milliseconds per sandbox added by it (C in parallel on this machine).
    const msPer = (b: Boundary): number => (spawnRates[b] ? 1000 / spawnRates[b] : NaN);
    const layerCostMs = {
      process: round(msPer('process') - msPer('thread')),
      permissionModel: round(msPer('process+permission') - msPer('process')),
      namespaces: round(msPer('process+permission+namespaces') - msPer('process+permission')),
      egressProxy: round(msPer('process+permission+namespaces+egress') - msPer('process+permission+namespaces')),
      cgroupAndRlimits: round(
        msPer('process+permission+namespaces+cgroup+rlimits') - msPer('process+permission+namespaces'),
      ),
      seccomp: round(
        msPer('process+permission+namespaces+cgroup+rlimits+seccomp') -
          msPer('process+permission+namespaces+cgroup+rlimits'),
      ),
      kernelLimits: round(
        msPer('process+permission+namespaces+cgroup+rlimits+seccomp') - msPer('process+permission+namespaces'),
      ),
    };
    say(`spawn cost per layer (ms per sandbox, ${C} at a time): ${JSON.stringify(layerCostMs)}`);
    const targets = {
      ...cpuTargets(ratios.cpu),
      processPoolVsBullmqThreads: { target: '≥ 1.0', met: ratios.processPoolVsBullmqThreads >= 1.0 },
      processPoolVsBullmqProcesses: { target: '≥ 1.5', met: ratios.processPoolVsBullmqProcesses >= 1.5 },
      processJobVsRawSpawnRate: { target: '≥ 0.9', met: ratios.processJobVsRawSpawnRate >= 0.9 },
      processJobP50StartMs: { target: '≤ 5', met: processJob.p50StartMs <= 5 },
      processSandboxRssMb: { target: '≤ 40', met: processRss.rssMbPerSandbox <= 40 },
      processSandboxPssMb: { target: '≤ 40', met: processRss.pssMbPerSandbox <= 40 },
      poolVsBullmqSandboxed: { target: '≥ 1.5', met: ratios.poolVsBullmqSandboxed >= 1.5 },
      jobVsRawSpawnRate: { target: '≥ 0.9', met: ratios.jobVsRawSpawnRate >= 0.9 },
      jobP50StartMs: { target: '≤ 5', met: job.p50StartMs <= 5 },
      poolVsBullmqInline: { target: '≥ 0.9', met: ratios.poolVsBullmqInline >= 0.9 },
      httpSingleVsNoopRoute1: { target: '≥ 0.8', met: ratios.httpSingleVsNoopRoute1 >= 0.8 },
      httpSingleVsNoopRoute16: { target: '≥ 0.8', met: ratios.httpSingleVsNoopRoute16 >= 0.8 },
      httpSingleVsNoopRoute64: { target: '≥ 0.8', met: ratios.httpSingleVsNoopRoute64 >= 0.8 },
      httpBatchVsAddBulk: { target: '≥ 0.8', met: ratios.httpBatchVsAddBulk >= 0.8 },
      idleWorkerRssMb: { target: '≤ 80', met: idle.rssMb <= 80 },
      oneLocalSecretVsNone: { target: '≥ 0.9', met: ratios.oneLocalSecretVsNone >= 0.9 },
      vaultOverheadP50Ms: { target: '≤ 1', met: secretOverheadP50Ms.vault <= 1 },
      kmsOverheadP50Ms: { target: '≤ 2', met: secretOverheadP50Ms.kms <= 2 },
      aclEnqueueVsNone: { target: '≥ 0.95', met: ratios.aclEnqueueVsNone >= 0.95 },
      aclAndAuditChainJobsVsNone: { target: '≥ 0.95', met: ratios.aclAndAuditChainJobsVsNone >= 0.95 },
      injectionOverheadP50Ms: { target: '≤ 2', met: injection.overheadP50Ms <= 2 },
    };
    const out = {
      node: process.version,
      redis: redisVersion,
      concurrency: C,
      osLayer: osLayer.available,
      cpuSource: meter.source,
      cpuMsPerJob,
      bullmqInline,
      bullmqSandboxed,
      bullmqProcesses,
      pool,
      processPool,
      processPoolNoOs,
      job,
      processJob,
      rawSpawnPerSecond: spawnRates,
      layerCostMs,
      processRss,
      rawThreadSpawnPerSecond: spawnRate,
      secrets,
      secretOverheadP50Ms,
      enqueue,
      leastPrivilege,
      injection,
      idleSupervisor: idle,
      paired,
      ratios,
      targets,
    };
    if (args.json) process.stdout.write(`${JSON.stringify(out)}\n`);
    else {
      say('ratios:');
      for (const [k, v] of Object.entries(ratios))
        say(`  ${k.padEnd(24)} ${typeof v === 'number' ? v : JSON.stringify(v)}`);
      say('targets:');
      for (const [k, v] of Object.entries(targets))
        say(`  ${k.padEnd(24)} ${v.target.padEnd(6)} ${v.met ? 'met' : 'NOT met'}`);
    }
  } finally {
    await redis.release();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
