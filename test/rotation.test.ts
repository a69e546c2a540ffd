import { createHash } from 'node:crypto';
import { LocalProvider } from '../src/secrets/local-provider.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FleetConfig } from '../src/config/resolve.js';
import type { JobTypeInput } from '../src/config/schema.js';
import { FleetEventBus, type FleetEvents } from '../src/events.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import { readAudit } from '../src/secrets/audit.js';
import { RotationService } from '../src/rotation/rotation-service.js';
import { readRotationState } from '../src/rotation/state.js';
import {
  FIXTURES,
  fixtureType,
  makeProducer,
  startSupervisor,
  testConfig,
  waitForJob,
  localStore,
  until,
} from './helpers/fleet.js';
import { capturingLogger } from './helpers/leaks.js';
import { awaitNext, waitForBullJob, waitForJobState } from './helpers/wait.js';
import { describe, expect, it, type TestRedis } from './helpers/fixture.js';
import type { Logger } from '../src/observability/logger.js';

const sha = (b: Uint8Array | string): string => createHash('sha256').update(b).digest('hex');
/** A span of time that is itself the measurement (runs counted over it), never a wait for a state. */
const observe = (ms: number): Promise<void> => new Promise((res) => setTimeout(res, ms));
const running: RotationService[] = [];

async function setup(
  redis: TestRedis,
  rotation: Record<string, unknown>,
  types: JobTypeInput[] = [fixtureType('t', 'ok.mjs')],
): Promise<{ config: FleetConfig; local: LocalProvider }> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-rot-'));
  const config = testConfig(redis.url, types, { dataDir, secrets: { items: { 'api-key': { rotation } } } });
  const local = localStore(dataDir, 10);
  await local.write('api-key', Buffer.from('initial-value-0001'));
  return { config, local };
}

async function startRotation(
  redis: TestRedis,
  config: FleetConfig,
  events = new FleetEventBus(),
  logger?: Logger,
): Promise<RotationService> {
  const s = new RotationService({ config, redisUrl: redis.url, events, ...(logger ? { logger } : {}) });
  running.push(s);
  await s.start();
  return s;
}

async function stopAll(): Promise<void> {
  for (const s of running.splice(0)) await s.stop();
}

async function currentVersion(local: LocalProvider): Promise<string> {
  return (await local.list()).find((m) => m.name === 'api-key')!.version;
}

describe('secret rotation', () => {
  it('a schedule fires, each rotation promotes a new version, audits every step and moves the metrics', async ({
    redis,
  }) => {
    const { config, local } = await setup(redis, {
      schedule: '1s',
      rotator: { type: 'random', bytes: 24 },
      graceSeconds: 60,
    });
    const events = new FleetEventBus();
    const metrics = new FleetMetrics({ defaultMetrics: false });
    metrics.attach(events);
    const svc = await startRotation(redis, config, events);
    await until('two rotations', async () => Number(await currentVersion(local)) >= 3);
    const state = await readRotationState(redis.client, config.redis.prefix, 'api-key');
    expect(state.lastOutcome).toBe('ok');
    expect(state.rotations).toBeGreaterThanOrEqual(2);
    expect(Object.keys(state.retiring).length).toBeGreaterThanOrEqual(2);
    const value = Buffer.from((await local.readVersion('api-key', await currentVersion(local))).value).toString();
    expect(value).toMatch(/^[A-Za-z0-9_-]{32}$/);
    const actions = (await readAudit(redis.client, config.redis.prefix, { secret: 'api-key' })).map((a) => a.action);
    for (const step of ['rotate:create', 'rotate:test', 'rotate:promote']) expect(actions).toContain(step);
    expect(await metrics.registry.getSingleMetricAsString('fleet_secret_rotations_total')).toMatch(
      /fleet_secret_rotations_total\{secret="api-key",outcome="ok"\} [2-9]/,
    );
    const health = (await svc.health()).find((h) => h.secret === 'api-key')!;
    expect(health).toMatchObject({ hasPolicy: true, overdue: false });
    expect(health.exposureRisk).toBeLessThan(1);
    await stopAll();
  });

  it('many schedulers starting at once make one schedule and no duplicate runs', async ({ redis }) => {
    const { config, local } = await setup(redis, { schedule: '1s', rotator: { type: 'random', bytes: 16 } });
    await Promise.all(Array.from({ length: 4 }, () => startRotation(redis, config)));
    const t0 = Date.now();
    // Runs are counted over a span of about three windows: the span is the measurement.
    await observe(3500);
    await until(
      'two rotations',
      async () => (await readRotationState(redis.client, config.redis.prefix, 'api-key')).rotations >= 2,
    );
    const schedulers = await running[0]!.queue.getJobSchedulers();
    expect(schedulers.map((s) => s.key)).toEqual(['rotate-api-key']);
    const rotations = (await readRotationState(redis.client, config.redis.prefix, 'api-key')).rotations;
    const elapsedWindows = Math.ceil((Date.now() - t0) / 1000);
    expect(rotations).toBeGreaterThanOrEqual(2);
    expect(rotations).toBeLessThanOrEqual(elapsedWindows + 1);
    expect(Number(await currentVersion(local))).toBe(1 + rotations);
    await stopAll();
  });

  it('a window missed while the scheduler was down is caught up once, not once per window', async ({ redis }) => {
    const { config } = await setup(redis, { schedule: '1s', rotator: { type: 'random', bytes: 16 } });
    const events = new FleetEventBus();
    await startRotation(redis, config, events);
    await until(
      'first rotation',
      async () => (await readRotationState(redis.client, config.redis.prefix, 'api-key')).rotations >= 1,
    );
    await stopAll();
    const before = (await readRotationState(redis.client, config.redis.prefix, 'api-key')).rotations;
    await observe(3500); // three windows pass with nothing running: the missed windows are the test
    const caughtUp = awaitNext(events, 'rotation:finished', (e) => e.secret === 'api-key');
    const restartedAt = Date.now();
    await startRotation(redis, config, events);
    await caughtUp;
    // Runs are counted until 700 ms after the restart (less than one window, so no scheduled run
    // falls in it): a catch-up per missed window would show three here.
    await observe(Math.max(0, restartedAt + 700 - Date.now()));
    const after = (await readRotationState(redis.client, config.redis.prefix, 'api-key')).rotations;
    expect(after - before).toBe(1);
    await stopAll();
  });

  it('a failed test step keeps the current version, drops the pending one, retries, audits and counts', async ({
    redis,
  }) => {
    const { config, local } = await setup(redis, {
      schedule: 'weekly',
      rotator: { type: 'module', path: path.join(FIXTURES, 'rotator-failing-test.mjs') },
      attempts: 2,
      backoffMs: 20,
    });
    const events = new FleetEventBus();
    const finished: FleetEvents['rotation:finished'][] = [];
    events.on('rotation:finished', (e) => finished.push(e));
    const svc = await startRotation(redis, config, events);
    const job = await svc.rotateNow('api-key');
    await waitForBullJob(job, 'failed');
    expect(await currentVersion(local)).toBe('1');
    expect(Buffer.from((await local.readVersion('api-key', '1')).value).toString()).toBe('initial-value-0001');
    await expect(local.readVersion('api-key', '2')).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND' });
    const state = await readRotationState(redis.client, config.redis.prefix, 'api-key');
    expect(state).toMatchObject({ lastOutcome: 'failed', lastFailedStep: 'test', failures: 2, rotations: 0 });
    expect(state.lastError).toContain('rejected the new credential');
    expect(finished.map((f) => [f.ok, f.step])).toEqual([
      [false, 'test'],
      [false, 'test'],
    ]);
    const audit = await readAudit(redis.client, config.redis.prefix, { secret: 'api-key' });
    expect(audit.filter((a) => a.action === 'rotate:test' && a.outcome === 'error')).toHaveLength(2);
    expect((await svc.health()).find((h) => h.secret === 'api-key')!.exposureRisk).toBeGreaterThanOrEqual(1);
    await stopAll();
  });

  it('keeps the previous version readable for the grace window, then retires it and runs finish', async ({ redis }) => {
    const { config, local } = await setup(redis, {
      schedule: 'weekly',
      rotator: { type: 'module', path: path.join(FIXTURES, 'rotator-external.mjs') },
      graceSeconds: 1,
    });
    const { logger, lines } = capturingLogger();
    const svc = await startRotation(redis, config, new FleetEventBus(), logger);
    const job = await svc.rotateNow('api-key');
    await waitForBullJob(job, 'completed');
    expect(await currentVersion(local)).toBe('2');
    expect(Buffer.from((await local.readVersion('api-key', '2')).value).toString()).toMatch(/^18-next-\d+$/);
    expect(Buffer.from((await local.readVersion('api-key', '1')).value).toString()).toBe('initial-value-0001');
    const retireAt = (await readRotationState(redis.client, config.redis.prefix, 'api-key')).retiring['1'];
    expect(retireAt, 'version 1 is waiting out its grace window').toBeDefined();
    await until('version 1 to be retired once its grace window is over', async () => {
      await svc.sweep();
      return (
        (await local.readVersion('api-key', '1').then(
          () => false,
          (e: { code?: string }) => e.code,
        )) === 'SECRET_NOT_FOUND'
      );
    });
    expect(Date.now(), 'retired no earlier than the end of its grace window').toBeGreaterThanOrEqual(retireAt!);
    // Each step ran in its own sandbox with no credential in its environment (proxy and temp settings only).
    const calls = lines.flatMap(
      (l) => (JSON.parse(l) as { msg: string }).msg.match(/^rotator-call (.*)$/)?.slice(1) ?? [],
    );
    expect(calls.map((c) => c.replace(/^create env=.*/, 'create'))).toEqual(['create', 'set', 'test', 'finish:1']);
    const env = calls[0]!.replace('create env=', '').split(',');
    const allowed = new Set([
      'HOME',
      'TMPDIR',
      'NODE_ENV',
      'PWD',
      'HTTP_PROXY',
      'HTTPS_PROXY',
      'http_proxy',
      'https_proxy',
      'NODE_USE_ENV_PROXY',
    ]);
    expect(env.filter((k) => !allowed.has(k))).toEqual([]);
    // The new value was masked in the rotator's console output.
    expect(lines.some((l) => l.includes('testing the new value ***'))).toBe(true);
    await stopAll();
  });

  it('jobs starting after a promotion get the new version; a job already running keeps its copy', async ({ redis }) => {
    const { config, local } = await setup(redis, { schedule: 'weekly', rotator: { type: 'random', bytes: 16 } }, [
      fixtureType('reader', 'secret-reader.mjs', { secrets: ['api-key'] }),
    ]);
    await startSupervisor({ config });
    const svc = await startRotation(redis, config);
    const p = makeProducer(config);
    const inFlight = await p.enqueue('reader', { names: ['api-key'], holdMs: 1500 });
    await waitForJobState(p, inFlight.id, 'active');
    const job = await svc.rotateNow('api-key');
    await waitForBullJob(job, 'completed');
    const v2 = Buffer.from((await local.readVersion('api-key', '2')).value);
    const after = await waitForJob(p, (await p.enqueue('reader', { names: ['api-key'] })).id);
    const before = await waitForJob(p, inFlight.id);
    expect(before.result).toEqual({ 'api-key': { length: 18, sha256: sha('initial-value-0001') } });
    expect(after.result).toEqual({ 'api-key': { length: v2.length, sha256: sha(v2) } });
    await stopAll();
  });
});
