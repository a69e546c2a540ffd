/**
 * The boundary both ways (`npm run test:hostile` runs it with the hostile suite): everything that
 * crosses back out of a sandbox is hostile input. A processor that writes raw frames and bytes on
 * its channel, floods messages, secret names and egress connections, and a seeded protocol fuzzer,
 * each under a real supervisor, with the OS layer on (when this machine has it) and off. Each test
 * asserts the attempt failed and why (the job's error code), that the supervisor is still running,
 * and that another type's job still completes.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import type { FleetConfig } from '../src/config/resolve.js';
import { FleetEventBus } from '../src/events.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import { queuePrefix } from '../src/redis/keys.js';
import { readAudit } from '../src/secrets/audit.js';
import { probeOsLayer } from '../src/workers/sandbox-boundary.js';
import type { Supervisor } from '../src/workers/supervisor.js';
import type { Producer } from '../src/producers/producer.js';
import { fixtureType, makeProducer, startSupervisor, testConfig, waitForJob } from './helpers/fleet.js';
import { dumpKeys } from './helpers/redis.js';
import { describe, expect, fleetFileTest as it } from './helpers/fixture.js';
import { makeLogger } from '../src/observability/logger.js';

const osLayer = await probeOsLayer('auto');
if (!osLayer.available) console.warn(`SKIPPING the OS-layer half of the boundary suite: ${osLayer.reason}`);
const FUZZ_SEED = Number(process.env.FLEET_FUZZ_SEED ?? 20261130);
const FUZZ_JOBS = 100;
const FUZZ_FRAMES_PER_JOB = 100;

const DECLARED_VALUE = 'declared-one-value-4242';
const stats = { cpuMs: 1, heapUsedBytes: 1, peakHeapBytes: 1, secretsZeroed: 0 };

const modes = [
  ['OS layer on', 'auto'],
  ['OS layer off', 'off'],
] as const;

describe.each(modes)('a sandbox attacking its supervisor, %s', (mode, setting) => {
  const skip = setting === 'auto' && !osLayer.available;
  let config: FleetConfig;
  let sup: Supervisor;
  let producer: Producer;
  const logLines: string[] = [];
  const events = new FleetEventBus();
  const metrics = new FleetMetrics({ defaultMetrics: false });
  metrics.attach(events);

  it.beforeAll(async ({ redis }) => {
    if (skip) return;
    config = testConfig(
      redis.url,
      [
        fixtureType('hostile', 'hostile/boundary.mjs', {
          sandbox: 'process',
          isolation: 'pool',
          // Retries would replay the attack: a violation must not be retried.
          attempts: 3,
          backoff: { type: 'fixed', delayMs: 10 },
          timeoutMs: 20_000,
          concurrency: 2,
          secrets: ['declared-one'],
          egress: 'any',
          limits: { maxEgressConnections: 16, maxLogLines: 1000 },
        }),
        fixtureType('fuzzed', 'hostile/boundary.mjs', {
          sandbox: 'process',
          isolation: 'pool',
          attempts: 1,
          // A cut frame leaves the channel waiting for bytes that never come: the timeout ends it.
          timeoutMs: 3000,
          abortGraceMs: 100,
          concurrency: 2,
          limits: { maxLogLines: 1_000_000, maxLogBytes: 100_000_000 },
        }),
        fixtureType('bystander', 'ok.mjs', { sandbox: 'process', isolation: 'pool', timeoutMs: 10_000 }),
      ],
      { supervisor: { metricsPort: 0, heartbeatMs: 500, shutdownDeadlineMs: 2000, osLayer: setting } },
    );
    const { localStore } = await import('./helpers/fleet.js');
    await localStore(config.dataDir).write('declared-one', Buffer.from(DECLARED_VALUE));
    const logger = makeLogger({ format: 'json', destination: { write: (line: string) => void logLines.push(line) } });
    sup = await startSupervisor({ config, events, logger });
    producer = makeProducer(config);
  });

  const run = async (type: string, data: Record<string, unknown>) =>
    waitForJob(producer, (await producer.enqueue(type, data)).id, 30_000);

  /** The supervisor still runs, and another type's job still completes. */
  const fleetStillServes = async (): Promise<void> => {
    expect(sup.state).toBe('running');
    const other = await run('bystander', { still: 'here' });
    expect(other.state).toBe('completed');
    expect(other.result).toEqual({ got: { still: 'here' }, attempt: 1 });
  };

  it.skipIf(skip)(
    'a message of the wrong shape, out of turn, or bytes that are no frame: SANDBOX_PROTOCOL, not retried, audited and counted',
    async ({ redis }) => {
      const cases: Record<string, unknown>[] = [
        { attack: 'frame', message: { type: 'log', level: 'nope', msg: 'x', source: 'processor' } },
        { attack: 'frame', message: { type: 'done', ok: false, ...stats } },
        { attack: 'frame', message: null },
        { attack: 'frame', message: { cmd: 'NODE_HANDLE', type: 'NODE_HANDLE', msg: { cmd: 'NODE_HANDLE_ACK' } } },
        { attack: 'frame', message: { type: 'ready' } },
        { attack: 'frame', message: { type: 'secret-request', reqId: -1, name: 'declared-one' } },
        { attack: 'frame', message: { type: 'done', ok: true, resultJson: '{not json', ...stats } },
        { attack: 'bytes', hex: '00000009deadbeefcafebabe00' },
        { attack: 'bytes', hex: '0000000c0000ffff7b7d7b7d7b7d7b7d' },
      ];
      const ids: string[] = [];
      for (const data of cases) {
        const job = await run('hostile', data);
        expect(job.state, JSON.stringify(data)).toBe('failed');
        expect(job.error?.code, `${JSON.stringify(data)}: ${job.error?.message}`).toBe('SANDBOX_PROTOCOL');
        expect(job.attemptsMade, 'a protocol violation is not retried').toBe(1);
        ids.push(job.id);
      }
      await fleetStillServes();
      const violations = async () =>
        (await readAudit(redis.client, config.redis.prefix, {})).filter((a) => a.action === 'sandbox-violation');
      await expect.poll(async () => (await violations()).length).toBeGreaterThanOrEqual(ids.length);
      const audit = await violations();
      for (const id of ids) expect(audit.find((a) => a.jobId === id)?.reason, id).toMatch(/^SANDBOX_PROTOCOL: /);
      expect(await metrics.registry.getSingleMetricAsString('fleet_sandbox_violations_total')).toContain(
        `fleet_sandbox_violations_total{job_type="hostile",code="SANDBOX_PROTOCOL"} ${cases.length}`,
      );
    },
  );

  it.skipIf(skip)(
    'an exit notice sent raw: the supervisor closes the channel, the sandbox ends, and its job fails as a crash (SANDBOX_CRASHED)',
    async () => {
      const job = await run('hostile', { attack: 'frame', message: { type: 'exiting' } });
      expect(job.state).toBe('failed');
      expect(job.error?.code).toBe('SANDBOX_CRASHED');
      // The runtime read the channel's end and exited by itself, with 0: no kill was needed.
      expect(job.error?.message).toMatch(/sandbox process exited \(code 0\) mid-job/);
      await fleetStillServes();
    },
  );

  it.skipIf(skip)(
    'a frame announcing 4 GB is refused from its header (SANDBOX_PROTOCOL); the supervisor buffers none of it',
    async () => {
      const before = process.memoryUsage().rss;
      const job = await run('hostile', { attack: 'huge-header' });
      expect(job.error?.code).toBe('SANDBOX_PROTOCOL');
      expect(job.error?.message).toMatch(/announced 4294967280 bytes, above this channel's limit/);
      expect(process.memoryUsage().rss - before).toBeLessThan(100 * 1024 * 1024);
      await fleetStillServes();
    },
  );

  it.skipIf(skip)(
    'past its limits, sent raw: a 32 MB progress frame is refused from its header, a 100 KB progress value and 5,000 log lines are SANDBOX_LIMIT, a 5 MB result RESULT_TOO_LARGE; Redis holds none of it',
    async ({ redis }) => {
      const progress = await run('hostile', { attack: 'progress-huge', mb: 32 });
      expect(progress.error?.code).toBe('SANDBOX_PROTOCOL');
      expect(progress.error?.message).toMatch(/above this channel's limit/);
      const small = await run('hostile', {
        attack: 'frame',
        message: { type: 'progress', value: 'p'.repeat(100_000) },
      });
      expect(small.error?.code).toBe('SANDBOX_LIMIT');
      expect(small.error?.message).toMatch(/progress value of 100002 bytes, above maxProgressBytes=16384/);
      const logs = await run('hostile', { attack: 'log-flood', lines: 5000 });
      expect(logs.error?.code).toBe('SANDBOX_LIMIT');
      expect(logs.error?.message).toMatch(/log output past its limits .*maxLogLines=1000/);
      const q = new Queue('hostile', { connection: redis.client, prefix: queuePrefix(config.redis.prefix, 'hostile') });
      expect((await q.getJobLogs(logs.id)).count).toBeLessThanOrEqual(1001);
      const job = await q.getJob(small.id);
      expect(JSON.stringify(job?.progress ?? 0).length).toBeLessThan(100);
      await q.close();
      const result = await run('hostile', { attack: 'big-result', mb: 5 });
      expect(result.error?.code).toBe('RESULT_TOO_LARGE');
      expect(result.error?.message).toMatch(/above maxResultBytes=1048576/);
      // Through the runtime's own API the same values are refused inside the sandbox.
      const ctxProgress = await run('hostile', { attack: 'progress-ctx' });
      expect(ctxProgress.error?.code).toBe('RESULT_NOT_SERIALIZABLE');
      expect(ctxProgress.error?.message).toMatch(/above maxProgressBytes=16384/);
      await fleetStillServes();
    },
  );

  it.skipIf(skip)(
    "a delivered value sent raw as an error code or a \\u-escaped result is masked by the supervisor: not in the job's error or result, nor anywhere in Redis or the logs",
    async ({ redis }) => {
      const code = await run('hostile', { attack: 'code-leak', name: 'declared-one' });
      expect(code.error?.code).toBe('PROCESSOR_FAILED');
      expect(code.error?.message).toBe('[sandbox reported a malformed code] boom');
      const escaped = await run('hostile', { attack: 'unicode-result', name: 'declared-one' });
      expect(escaped.state).toBe('completed');
      expect(escaped.result).toEqual({ v: '***' });
      const everything = [...(await dumpKeys(redis.url, `${config.redis.prefix}*`)).values()].join('\n');
      expect(everything).toContain(escaped.id);
      expect(everything).not.toContain(DECLARED_VALUE);
      expect(logLines.join('')).not.toContain(DECLARED_VALUE);
      await fleetStillServes();
    },
  );

  it.skipIf(skip)(
    "a sandbox's log fields cannot stand in for the supervisor's own nor forge an audit line",
    async () => {
      const job = await run('hostile', { attack: 'log-forge', victim: 'VICTIM-42' });
      expect(job.state).toBe('completed');
      const lines = logLines.map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines.filter((l) => l.jobId === 'VICTIM-42')).toEqual([]);
      const line = lines.find((l) => l.source === 'processor' && l.msg === 'secret access');
      expect(line).toMatchObject({
        jobId: job.id,
        jobType: 'hostile',
        source: 'processor',
        fields: { jobId: 'VICTIM-42' },
      });
      expect(line?.audit).toBeUndefined();
      expect(line?.component).toBeUndefined();
    },
  );

  it.skipIf(skip)(
    'refused egress attempts one after another: killed past maxEgressRefusals (SANDBOX_LIMIT); at most that many audit records, each cut to size',
    async ({ redis }) => {
      const job = await run('hostile', { attack: 'refusal-flood', count: 500, hostLen: 8000, parallel: 4 });
      expect(job.error?.code).toBe('SANDBOX_LIMIT');
      expect(job.error?.message).toMatch(/more than 20 refused egress attempts in one job \(maxEgressRefusals\)/);
      const refusals = (await readAudit(redis.client, config.redis.prefix, {})).filter(
        (a) => a.action === 'egress-refused' && a.jobId === job.id,
      );
      expect(refusals.length).toBeLessThanOrEqual(20);
      // Nothing reported after the kill either (not attributed to no job, nor to a later one).
      const unattributed = (await readAudit(redis.client, config.redis.prefix, {})).filter(
        (a) => a.action === 'egress-refused' && a.jobId === '-' && a.reason?.includes('aaaa'),
      );
      expect(unattributed).toEqual([]);
      for (const r of refusals) expect((r.reason ?? '').length).toBeLessThan(800);
      await fleetStillServes();
    },
  );

  it.skipIf(skip)('a sandbox cannot send its job back to the queue by claiming SHUTDOWN', async () => {
    const job = await run('hostile', { attack: 'claim-shutdown' });
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('PROCESSOR_FAILED');
    expect(job.error?.message).toMatch(/^\[sandbox reported SHUTDOWN\] requeue me/);
    await fleetStillServes();
  });

  it.skipIf(skip)(
    'undeclared secret names: killed past maxDeniedSecretRequests (SANDBOX_LIMIT); one audit key and one metric series for them all',
    async ({ redis }) => {
      const job = await run('hostile', { attack: 'secret-names', count: 2000 });
      expect(job.error?.code).toBe('SANDBOX_LIMIT');
      expect(job.error?.message).toMatch(/more than 10 denied secret requests/);
      const keys = await redis.client.keys(`${config.redis.prefix}:audit-stats:*`);
      expect(keys.filter((k) => k.includes('made-up-name'))).toEqual([]);
      expect(keys.filter((k) => k.endsWith('(undeclared)'))).toHaveLength(1);
      const series = await metrics.registry.getSingleMetricAsString('fleet_secret_accesses_total');
      expect(series).not.toContain('made-up-name');
      expect(series).toContain('secret="(undeclared)",job_type="hostile",outcome="denied"} 11');
      await fleetStillServes();
    },
  );

  it.skipIf(skip)(
    'an egress connection flood: at most maxEgressConnections are held; the drop is reported once',
    async () => {
      const before = sup.events;
      const refusals: string[] = [];
      const off = before.on('egress:refused', (r) => refusals.push(r.reason));
      const job = await run('hostile', { attack: 'egress-flood', count: 300, cap: 16 });
      off();
      expect(job.state, JSON.stringify(job.error)).toBe('completed');
      const r = job.result as { opened: number; open: number };
      expect(r.open).toBeLessThanOrEqual(16);
      expect(refusals.filter((x) => x.includes('maxEgressConnections'))).toHaveLength(1);
      await fleetStillServes();
    },
  );

  it.skipIf(skip)(
    `the protocol fuzzer: ${FUZZ_JOBS * FUZZ_FRAMES_PER_JOB} seeded random and mutated frames from inside real sandboxes; every job ends with a known code, the supervisor stays up and bounded`,
    async () => {
      const before = process.memoryUsage().rss;
      const allowed = new Set(['SANDBOX_PROTOCOL', 'SANDBOX_LIMIT', 'RESULT_TOO_LARGE', 'PROCESSOR_FAILED', 'TIMEOUT']);
      const outcomes = new Map<string, number>();
      let frames = 0;
      for (let batch = 0; batch < FUZZ_JOBS / 10; batch++) {
        const jobs = await Promise.all(
          Array.from({ length: 10 }, async (_, i) =>
            run('fuzzed', { attack: 'fuzz', seed: FUZZ_SEED + batch * 10 + i, count: FUZZ_FRAMES_PER_JOB }),
          ),
        );
        for (const job of jobs) {
          frames += FUZZ_FRAMES_PER_JOB;
          const key = job.state === 'completed' ? 'completed' : (job.error?.code ?? 'none');
          outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
          if (job.state !== 'completed')
            expect(allowed.has(job.error?.code ?? ''), `seed ${JSON.stringify(job)}`).toBe(true);
        }
        expect(sup.state).toBe('running');
      }
      console.info(
        `fuzzer (${mode}, seed ${FUZZ_SEED}): ${frames} frames in ${FUZZ_JOBS} jobs; outcomes ${JSON.stringify(Object.fromEntries(outcomes))}; supervisor RSS ${Math.round(before / 1048576)} → ${Math.round(process.memoryUsage().rss / 1048576)} MB`,
      );
      expect(frames).toBeGreaterThanOrEqual(10_000);
      expect(outcomes.get('SANDBOX_PROTOCOL') ?? 0).toBeGreaterThan(0);
      expect(process.memoryUsage().rss - before).toBeLessThan(200 * 1024 * 1024);
      await fleetStillServes();
    },
    180_000,
  );
});

describe('a processor that breaks its channel while it loads', () => {
  it('does not stop the fleet: its type fails its jobs with SANDBOX_PROTOCOL, the other types run', async ({
    redis,
  }) => {
    const config = testConfig(redis.url, [
      fixtureType('poison', 'hostile/poison-load.mjs', { sandbox: 'process', attempts: 1 }),
      fixtureType('bystander', 'ok.mjs', { sandbox: 'process' }),
    ]);
    const events = new FleetEventBus();
    const violations: string[] = [];
    events.on('sandbox:violation', (v) => violations.push(`${v.jobType}:${v.code}`));
    const sup = await startSupervisor({ config, events });
    expect(sup.state).toBe('running');
    const producer = makeProducer(config);
    const poison = await waitForJob(producer, (await producer.enqueue('poison', {})).id);
    expect(poison.error?.code).toBe('SANDBOX_PROTOCOL');
    const ok = await waitForJob(producer, (await producer.enqueue('bystander', { a: 1 })).id);
    expect(ok.state).toBe('completed');
    expect(violations[0]).toBe('poison:SANDBOX_PROTOCOL');
  });
});

describe('the embedded redis-server', () => {
  it.skipIf(process.platform !== 'linux')('dies with the process that started it, even on SIGKILL', async () => {
    const here = path.dirname(fileURLToPath(import.meta.url));
    const dist = path.join(here, '..', 'dist', 'redis', 'embedded-redis.js');
    const script = `const { startEmbeddedRedis } = await import(${JSON.stringify(dist)});
      const r = await startEmbeddedRedis({ dataDir: process.argv[1], persistent: false });
      console.log(r.port); setInterval(() => {}, 1000);`;
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const child = spawn(
      process.execPath,
      ['--input-type=module', '-e', script, mkdtempSync(path.join(tmpdir(), 'fleet-orphan-'))],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    const port = await new Promise<number>((resolve) =>
      child.stdout.once('data', (d: Buffer) => resolve(Number(String(d).trim()))),
    );
    const reachable = (): Promise<boolean> =>
      new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      });
    expect(await reachable()).toBe(true);
    child.kill('SIGKILL');
    await expect.poll(reachable, { timeout: 10_000, interval: 50 }).toBe(false);
  });
});
