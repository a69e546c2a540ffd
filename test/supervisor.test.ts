import { Queue } from 'bullmq';
import { queuePrefix } from '../src/redis/keys.js';
import { FleetEventBus, type FleetEvents, type LifecycleState } from '../src/events.js';
import { Supervisor } from '../src/workers/supervisor.js';
import { liveSandboxCount } from '../src/workers/sandbox.js';
import { Lifecycle } from '../src/lifecycle.js';
import { capturingLogger } from './helpers/leaks.js';
import { fixtureType, makeProducer, startSupervisor, testConfig, waitForJob } from './helpers/fleet.js';
import { waitForJobState } from './helpers/wait.js';
import { describe, expect, it } from './helpers/fixture.js';

/** Most jobs running at one instant (a sweep over start/end events; ends sort before starts). */
function maxSimultaneous(spans: { startedAt: number; endedAt: number }[]): number {
  const events = spans
    .flatMap((s) => [[s.startedAt, 1] as const, [s.endedAt, -1] as const])
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let max = 0;
  for (const [, d] of events) max = Math.max(max, (now += d));
  return max;
}

describe('supervisor', () => {
  it('runs an enqueued job in a sandbox and stores its result', async ({ redis }) => {
    const config = testConfig(redis.url, [fixtureType('ok', 'ok.mjs')]);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const { id } = await p.enqueue('ok', { hello: 'world' });
    const job = await waitForJob(p, id);
    expect(job.state).toBe('completed');
    expect(job.result).toEqual({ got: { hello: 'world' }, attempt: 1 });
    expect(job.timings.startedAt).toBeGreaterThanOrEqual(job.timings.enqueuedAt);
  });

  it('fails each failure mode with its own code and keeps serving other jobs', async ({ redis }) => {
    const config = testConfig(redis.url, [
      fixtureType('throws', 'throws.mjs'),
      fixtureType('nonerror', 'throws-non-error.mjs'),
      fixtureType('loop', 'infinite-loop.mjs', { timeoutMs: 400, abortGraceMs: 100 }),
      fixtureType('oom', 'allocates.mjs', { maxOldGenerationSizeMb: 32, timeoutMs: 20_000 }),
      fixtureType('exit', 'exits.mjs'),
      fixtureType('deaf', 'ignores-abort.mjs', { timeoutMs: 400, abortGraceMs: 100 }),
      fixtureType('unserializable', 'non-serializable.mjs'),
      fixtureType('ok', 'ok.mjs'),
    ]);
    const sup = await startSupervisor({ config });
    const outcomes: FleetEvents['job:finished'][] = [];
    sup.events.on('job:finished', (e) => outcomes.push(e));
    const p = makeProducer(config);
    const expected: Record<string, string> = {
      throws: 'PROCESSOR_FAILED',
      nonerror: 'PROCESSOR_FAILED',
      loop: 'TIMEOUT',
      oom: 'MEMORY_LIMIT',
      exit: 'SANDBOX_CRASHED',
      deaf: 'TIMEOUT',
      unserializable: 'RESULT_NOT_SERIALIZABLE',
    };
    const ids = await Promise.all(Object.keys(expected).map(async (t) => [t, (await p.enqueue(t, {})).id] as const));
    const ok = await p.enqueue('ok', { still: 'serving' });
    for (const [type, id] of ids) {
      const job = await waitForJob(p, id);
      expect(job.state, type).toBe('failed');
      expect(job.error?.code, type).toBe(expected[type]);
    }
    expect((await waitForJob(p, ok.id)).state).toBe('completed');
    expect(sup.state).toBe('running');
    expect(outcomes.find((o) => o.jobType === 'loop')?.outcome).toBe('timeout');
    expect(outcomes.find((o) => o.jobType === 'oom')?.outcome).toBe('oom');
  });

  it('retries a failing job with backoff up to its attempts', async ({ redis }) => {
    const config = testConfig(redis.url, [
      fixtureType('flaky', 'flaky.mjs', { attempts: 2, backoff: { type: 'fixed', delayMs: 50 } }),
    ]);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const { id } = await p.enqueue('flaky', {});
    const job = await waitForJob(p, id);
    expect(job.state).toBe('completed');
    expect(job.result).toEqual({ attempt: 2 });
    expect(job.attemptsMade).toBe(2);
  });

  it('does not retry a timeout when retryOnTimeout is false', async ({ redis }) => {
    const config = testConfig(redis.url, [
      fixtureType('loop', 'infinite-loop.mjs', {
        timeoutMs: 300,
        abortGraceMs: 50,
        attempts: 3,
        retryOnTimeout: false,
      }),
    ]);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('loop', {})).id);
    expect(job.state).toBe('failed');
    expect(job.attemptsMade).toBe(1);
    expect(job.error?.code).toBe('TIMEOUT');
  });

  it('never runs more than `concurrency` jobs of a type at once', async ({ redis }) => {
    const config = testConfig(redis.url, [fixtureType('slow', 'slow.mjs', { concurrency: 2, warmSandboxes: 2 })]);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const jobs = await p.enqueueBatch(
      'slow',
      Array.from({ length: 6 }, () => ({ data: { ms: 150 } })),
    );
    const spans = [];
    for (const j of jobs) spans.push((await waitForJob(p, j.id)).result as { startedAt: number; endedAt: number });
    expect(maxSimultaneous(spans)).toBe(2);
  });

  it('holds a global concurrency cap across supervisors', async ({ redis }) => {
    const config = testConfig(redis.url, [
      fixtureType('capped', 'slow.mjs', { concurrency: 3, warmSandboxes: 3, globalConcurrency: 2 }),
    ]);
    await startSupervisor({ config });
    await startSupervisor({ config });
    const p = makeProducer(config);
    const jobs = await p.enqueueBatch(
      'capped',
      Array.from({ length: 8 }, () => ({ data: { ms: 150 } })),
    );
    const spans = [];
    for (const j of jobs) spans.push((await waitForJob(p, j.id)).result as { startedAt: number; endedAt: number });
    expect(maxSimultaneous(spans)).toBe(2);
  });

  it('cancels an active job in its sandbox, and removes a waiting one', async ({ redis }) => {
    const config = testConfig(redis.url, [
      fixtureType('deaf', 'ignores-abort.mjs', { concurrency: 1, timeoutMs: 20_000 }),
    ]);
    const sup = await startSupervisor({ config });
    const p = makeProducer(config);
    const active = await p.enqueue('deaf', {});
    const waiting = await p.enqueue('deaf', {});
    await waitForJobState(p, active.id, 'active');
    expect(await p.cancel(waiting.id)).toMatchObject({ outcome: 'removed', previousState: 'waiting' });
    await expect(p.getJob(waiting.id)).rejects.toMatchObject({ code: 'JOB_NOT_FOUND' });
    expect(await p.cancel(active.id)).toMatchObject({ outcome: 'cancelling' });
    const job = await waitForJob(p, active.id, 5000);
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('CANCELLED');
    expect(job.attemptsMade).toBe(1);
    expect(sup.status().types[0]!.active).toBe(0);
  });

  it('on stop, returns jobs still running at the deadline to the queue; another supervisor finishes them', async ({
    redis,
  }) => {
    const config = testConfig(redis.url, [fixtureType('slow', 'slow.mjs', { concurrency: 2, timeoutMs: 20_000 })]);
    const first = await startSupervisor({ config });
    const states: string[] = [];
    first.events.on('supervisor:state', (e) => states.push(e.state));
    const p = makeProducer(config);
    const a = await p.enqueue('slow', { ms: 4000 });
    await waitForJobState(p, a.id, 'active');
    await first.stop(200);
    expect(states).toEqual(['draining', 'stopped']);
    const back = await p.getJob(a.id);
    expect(back.state).toBe('waiting');
    expect(back.error).toBeNull();
    await startSupervisor({ config });
    const done = await waitForJob(p, a.id, 15_000);
    expect(done.state).toBe('completed');
  });

  it('lets running jobs finish when they end before the shutdown deadline', async ({ redis }) => {
    const config = testConfig(redis.url, [fixtureType('slow', 'slow.mjs')]);
    const sup = await startSupervisor({ config });
    const p = makeProducer(config);
    const a = await p.enqueue('slow', { ms: 300 });
    await waitForJobState(p, a.id, 'active');
    await sup.stop(5000);
    expect((await p.getJob(a.id)).state).toBe('completed');
  });

  it("fails a job whose payload was written to Redis behind the producer's back", async ({ redis }) => {
    const config = testConfig(redis.url, [
      fixtureType('strict', 'ok.mjs', {
        payloadSchema: { type: 'object', properties: { n: { type: 'number' } }, required: ['n'] },
      }),
    ]);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const q = new Queue('strict', {
      connection: { url: redis.url },
      prefix: queuePrefix(config.redis.prefix, 'strict'),
    });
    await q.add('strict', { n: 'not a number' }, { jobId: 'strict.0123456789abcdef0123456789abcdef' });
    await q.close();
    const job = await waitForJob(p, 'strict.0123456789abcdef0123456789abcdef');
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('INVALID_PAYLOAD');
  });

  it('pool isolation reuses a sandbox after a job that threw, and replaces one that was terminated', async ({
    redis,
  }) => {
    const config = testConfig(redis.url, [
      fixtureType('mixed', 'state-or-spin.mjs', {
        isolation: 'pool',
        concurrency: 1,
        timeoutMs: 500,
        abortGraceMs: 100,
        retryOnTimeout: false,
      }),
      fixtureType('boom', 'throws.mjs', { isolation: 'pool', concurrency: 1 }),
    ]);
    const sup = await startSupervisor({ config });
    const destroyed: string[] = [];
    sup.events.on('sandbox:destroyed', (e) => destroyed.push(`${e.jobType}:${e.reason}`));
    const p = makeProducer(config);
    for (let i = 0; i < 3; i++) await waitForJob(p, (await p.enqueue('boom', {})).id);
    expect(destroyed).toEqual([]);
    const runs = [];
    for (let i = 0; i < 3; i++)
      runs.push(((await waitForJob(p, (await p.enqueue('mixed', {})).id)).result as { runs: number }).runs);
    expect(runs).toEqual([1, 2, 3]);
    // A job that never yields is terminated at its timeout; its sandbox is destroyed and replaced.
    expect((await waitForJob(p, (await p.enqueue('mixed', { spin: true })).id)).error?.code).toBe('TIMEOUT');
    expect(destroyed).toEqual(['mixed:job-failed']);
    const after = (await waitForJob(p, (await p.enqueue('mixed', {})).id)).result as { runs: number };
    expect(after.runs).toBe(1);
  });

  it('a dozen job types, enqueued at once before the producer has connected: no listener-leak warning', async ({
    redis,
  }) => {
    const names = Array.from({ length: 12 }, (_, i) => `t${i}`);
    const config = testConfig(
      redis.url,
      names.map((n) => fixtureType(n, 'ok.mjs', { warmSandboxes: 0 })),
    );
    const warnings: string[] = [];
    const onWarning = (w: Error): void => void warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    try {
      const sup = await startSupervisor({ config });
      const p = makeProducer(config);
      const jobs = await Promise.all(names.map((n) => p.enqueue(n, { n: 1 })));
      for (const j of jobs) expect((await waitForJob(p, j.id)).state).toBe('completed');
      await sup.stop(0);
      // Warnings are emitted on the next tick.
      await new Promise<void>((resolve) => setImmediate(resolve));
      expect(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning'))).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('publishes its status for `fleet status`', async ({ redis }) => {
    const config = testConfig(redis.url, [fixtureType('ok', 'ok.mjs', { isolation: 'pool' })]);
    const sup = await startSupervisor({ config });
    const s = sup.status();
    expect(s.state).toBe('running');
    expect(s.types).toEqual([
      {
        jobType: 'ok',
        isolation: 'pool',
        layers: ['thread'],
        warm: 1,
        busy: 0,
        starting: 0,
        concurrency: 2,
        active: 0,
      },
    ]);
  });
});

describe('supervisor lifecycle', () => {
  it('allows exactly the documented moves', () => {
    const all = ['starting', 'running', 'draining', 'stopped', 'failed'] as const;
    const allowed: Record<string, readonly string[]> = {
      new: ['starting', 'stopped'],
      starting: ['running', 'failed'],
      running: ['draining'],
      draining: ['stopped'],
      failed: ['stopped'],
      stopped: [],
    };
    const path: Record<string, readonly (typeof all)[number][]> = {
      new: [],
      starting: ['starting'],
      running: ['starting', 'running'],
      draining: ['starting', 'running', 'draining'],
      failed: ['starting', 'failed'],
      stopped: ['stopped'],
    };
    for (const [from, moves] of Object.entries(allowed)) {
      for (const to of all) {
        const life = new Lifecycle('t');
        for (const step of path[from] ?? []) life.to(step);
        expect(life.state).toBe(from);
        if (moves.includes(to)) life.to(to);
        else expect(() => life.to(to)).toThrow(expect.objectContaining({ code: 'ILLEGAL_STATE' }));
      }
    }
  });

  const states = (events: FleetEventBus): LifecycleState[] => {
    const seen: LifecycleState[] = [];
    events.on('supervisor:state', (e) => seen.push(e.state));
    return seen;
  };

  it('starts once: a second start() and a start() after stop() are refused with ILLEGAL_STATE', async ({ redis }) => {
    const config = testConfig(redis.url, [fixtureType('ok', 'ok.mjs')]);
    const events = new FleetEventBus();
    const seen = states(events);
    const sup = await startSupervisor({ config, events });
    await expect(sup.start()).rejects.toMatchObject({
      code: 'ILLEGAL_STATE',
      message: expect.stringContaining('cannot go from "running" to "starting"'),
    });
    await sup.stop(0);
    await expect(sup.start()).rejects.toMatchObject({
      code: 'ILLEGAL_STATE',
      message: expect.stringContaining('create a new instance to start again'),
    });
    // stop() again is a no-op that resolves.
    await sup.stop(0);
    expect(seen).toEqual(['starting', 'running', 'draining', 'stopped']);
  });

  it('stop() before start() ends it without starting; stop() during start() waits, then drains', async ({ redis }) => {
    const config = testConfig(redis.url, [fixtureType('ok', 'ok.mjs')]);
    const never = new Supervisor({ config });
    await never.stop(0);
    expect(never.state).toBe('stopped');
    await expect(never.start()).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });

    const events = new FleetEventBus();
    const seen = states(events);
    const sup = new Supervisor({ config, events });
    const starting = sup.start();
    const stopping = sup.stop(0);
    await starting;
    await stopping;
    expect(seen).toEqual(['starting', 'running', 'draining', 'stopped']);
  });

  it('stop() returns only when no sandbox it started is alive: spares still starting and sandboxes on their way out too', async ({
    redis,
  }) => {
    // Job isolation: each job's end destroys its sandbox and starts a spare in the background,
    // which takes three seconds to load its processor (longer than the workers take to close).
    const config = testConfig(redis.url, [
      fixtureType('slow-load', 'slow-load.mjs', { isolation: 'job', sandbox: 'process', warmSandboxes: 2 }),
    ]);
    const events = new FleetEventBus();
    const sup = new Supervisor({ config, events });
    await sup.start();
    // Stopped the moment the first job's sandbox is sent on its way out and its spare is asked for.
    const stopped = new Promise<void>((resolve, reject) =>
      events.on('sandbox:destroyed', () => sup.stop(0).then(resolve, reject)),
    );
    await makeProducer(config).enqueue('slow-load', { n: 1 });
    await stopped;
    expect(liveSandboxCount()).toBe(0);
  });

  it('a failed start closes what it opened (state failed, then stopped) and its listeners are gone', async ({
    redis,
  }) => {
    // A processor without a default export: its warm sandboxes cannot load it.
    const config = testConfig(redis.url, [fixtureType('ok', 'ok.mjs'), fixtureType('broken', 'no-default.mjs')]);
    const { logger, lines } = capturingLogger();
    const events = new FleetEventBus();
    const seen = states(events);
    const sup = new Supervisor({ config, events, logger });
    await expect(sup.start()).rejects.toMatchObject({ code: 'PROCESSOR_LOAD_FAILED' });
    expect(sup.state).toBe('failed');
    await sup.stop(0);
    expect(seen).toEqual(['starting', 'failed', 'stopped']);
    // The supervisor's own listeners were removed: an event on the shared bus reaches none of them.
    events.emit('sandbox:violation', { jobId: 'x', jobType: 'ok', code: 'SANDBOX_PROTOCOL', problem: 'late' });
    expect(lines.join('')).not.toContain('sandbox killed for a violation');
  });
});
