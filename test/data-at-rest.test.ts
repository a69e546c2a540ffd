/**
 * Job data encrypted at rest (`encryptData`), on a real redis-server with an append-only file:
 * what a Redis dump or an AOF copy holds of an encrypting type, a tampered or foreign job, a data
 * key rotation with jobs in flight, and who sees the plaintext (the owner through the API) and who
 * does not (readers by scope, admins, Bull Board, the ops role).
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { sha256Hex } from '../src/api/auth.js';
import { listen } from '../src/api/api-server.js';
import { createApiApp } from '../src/api/http-api.js';
import type { FleetConfig } from '../src/config/resolve.js';
import { FleetEventBus } from '../src/events.js';
import { newJobId } from '../src/producers/job-id.js';
import type { JobView } from '../src/producers/job-view.js';
import { Producer } from '../src/producers/producer.js';
import { startEmbeddedRedis, type EmbeddedRedis } from '../src/redis/embedded-redis.js';
import { queueKey, queuePrefix } from '../src/redis/keys.js';
import { jobsSealedUnder } from '../src/rotation/data-key-use.js';
import { RotationService } from '../src/rotation/rotation-service.js';
import { readRotationState } from '../src/rotation/state.js';
import { envelopeVersion, sealedEnvelope } from '../src/secrets/job-data-seal.js';
import {
  fixtureType,
  guardAgainstLeaks,
  localStore,
  makeProducer,
  startSupervisor,
  testConfig,
  waitForJob,
} from './helpers/fleet.js';
import { dumpKeys } from './helpers/redis.js';
import { ensureEmbeddedUsers, urlWithCredential, type RedisRole } from '../src/redis/acl.js';

let server: EmbeddedRedis;
let dir: string;
let client: Redis;
let users: ReturnType<typeof ensureEmbeddedUsers>;
/** The prefix the Redis ACL users are built for (the rotation test runs each component as its role). */
const PREFIX = 'atrest';
const roleUrl = (role: RedisRole): string => urlWithCredential(server.url, users.roles[role]!);
/** The admin's URL: the other tests take a prefix of their own, outside the roles' patterns. */
let adminUrl: string;

beforeAll(async () => {
  // Production-shaped: an append-only file (written at every command), one ACL user per role.
  dir = mkdtempSync(path.join(tmpdir(), 'fleet-at-rest-'));
  users = ensureEmbeddedUsers(dir);
  server = await startEmbeddedRedis({
    dataDir: path.join(dir, 'redis'),
    persistent: true,
    args: ['--appendfsync', 'always'],
    acl: { prefix: PREFIX, users },
  });
  adminUrl = urlWithCredential(server.url, users.admin);
  client = new Redis(adminUrl);
});
afterAll(async () => {
  client.disconnect();
  await server.release();
  rmSync(dir, { recursive: true, force: true });
});
guardAgainstLeaks();

/** Every byte of the append-only files (Redis 7 keeps a base and increments in `appendonlydir/`). */
function aofBytes(): Buffer {
  const aofDir = path.join(dir, 'redis', 'appendonlydir');
  return Buffer.concat(readdirSync(aofDir).map((f) => readFileSync(path.join(aofDir, f))));
}

/** Every key and value the config's prefix holds, as one text. */
async function redisText(config: FleetConfig): Promise<string> {
  return [...(await dumpKeys(adminUrl, `${config.redis.prefix}:*`))].map(([k, v]) => `${k} ${v}`).join('\n');
}

const SEALED = (extra: Record<string, unknown> = {}) =>
  fixtureType('sealed', 'marks-everything.mjs', { encryptData: true, attempts: 1, ...extra });

describe('job data at rest', () => {
  it('a scan of every Redis key and of the AOF finds no payload, progress, log, result or failure plaintext of an encrypting type, and finds each of the same type without encryptData', async () => {
    const config = testConfig(adminUrl, [SEALED(), fixtureType('plain', 'marks-everything.mjs', { attempts: 1 })]);
    await startSupervisor({ config });
    const producer = makeProducer(config);
    const sealedMark = `sealed-${randomUUID()}`;
    const plainMark = `plain-${randomUUID()}`;
    const jobs = [
      await producer.enqueue('sealed', { marker: sealedMark }),
      await producer.enqueue('sealed', { marker: sealedMark, fail: true }),
      ...(await producer.enqueueBatch('sealed', [
        { data: { marker: sealedMark, n: 1 } },
        { data: { marker: sealedMark, n: 2 } },
      ])),
      await producer.enqueue('sealed', { marker: sealedMark, n: 3 }, { idempotencyKey: 'same-key' }),
      await producer.enqueue('plain', { marker: plainMark }),
      await producer.enqueue('plain', { marker: plainMark, fail: true }),
    ];
    const finished = await Promise.all(jobs.map((j) => waitForJob(producer, j.id)));
    expect(finished.map((j) => j.state)).toEqual([
      'completed',
      'failed',
      'completed',
      'completed',
      'completed',
      'completed',
      'failed',
    ]);
    // Log lines are written as the sandbox sends them: wait until every job has its line.
    await vi.waitFor(
      async () => {
        for (const j of jobs)
          expect(await client.llen(queueKey(config.redis.prefix, j.type, `${j.id}:logs`))).toBeGreaterThan(0);
      },
      { timeout: 5000 },
    );
    // An idempotent repeat opens the stored payload to compare bodies: same body → same job, other body → refused.
    expect(await producer.enqueue('sealed', { marker: sealedMark, n: 3 }, { idempotencyKey: 'same-key' })).toEqual(
      jobs[4],
    );
    await expect(
      producer.enqueue('sealed', { marker: sealedMark, n: 4 }, { idempotencyKey: 'same-key' }),
    ).rejects.toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED' });

    const keys = await redisText(config);
    const aof = aofBytes();
    // The control: the same processor's output of the plain type is there, in Redis and in the AOF.
    for (const part of ['progress-', 'log-', 'result-', 'failure-'])
      for (const where of [keys, aof.toString('latin1')]) expect(where).toContain(`${part}${plainMark}`);
    expect(aof.toString('latin1')).toContain(`{"marker":"${plainMark}"}`);
    expect(keys).not.toContain(sealedMark);
    expect(aof.includes(sealedMark)).toBe(false);
    expect(aof.includes(Buffer.from(sealedMark).toString('base64'))).toBe(false);
    expect(keys).toContain('fleet:v1:');

    // A type without encryptData is stored as before.
    const plainJob = jobs[5];
    expect(await client.hget(queueKey(config.redis.prefix, 'plain', plainJob!.id), 'data')).toBe(
      JSON.stringify({ marker: plainMark }),
    );
    // The owner reads it all back.
    const opened = await producer.openJob(finished[0]!);
    expect(opened).toMatchObject({
      data: { marker: sealedMark },
      result: { echoed: `result-${sealedMark}` },
      progress: { step: `progress-${sealedMark}` },
    });
    const failed = await producer.openJob(finished[1]!);
    expect(failed.error?.code).toBe('PROCESSOR_FAILED');
    expect(failed.error?.message).toContain(`failure-${sealedMark}`);
    expect(finished[1]!.error?.message).toMatch(/^fleet:v1:/);
  });

  it('a tampered ciphertext, or one copied from another job, fails its job with JOB_DATA_TAMPERED and no retry', async () => {
    const config = testConfig(adminUrl, [SEALED({ attempts: 3, backoff: { type: 'fixed', delayMs: 0 } })]);
    const producer = makeProducer(config);
    const [a, b, c] = [
      await producer.enqueue('sealed', { marker: 'a' }),
      await producer.enqueue('sealed', { marker: 'b' }),
      await producer.enqueue('sealed', { marker: 'c' }),
    ];
    const hash = (id: string): string => queueKey(config.redis.prefix, 'sealed', id);
    const stored = JSON.parse((await client.hget(hash(a.id), 'data')) ?? '') as { $sealed: string };
    const i = stored.$sealed.length - 30;
    const flipped = `${stored.$sealed.slice(0, i)}${stored.$sealed[i] === 'A' ? 'B' : 'A'}${stored.$sealed.slice(i + 1)}`;
    await client.hset(hash(a.id), 'data', JSON.stringify({ $sealed: flipped }));
    await client.hset(hash(b.id), 'data', (await client.hget(hash(c.id), 'data')) ?? '');

    await startSupervisor({ config });
    for (const id of [a.id, b.id]) {
      const j = await waitForJob(producer, id);
      expect(j).toMatchObject({ state: 'failed', attemptsMade: 1, error: { code: 'JOB_DATA_TAMPERED' } });
      expect((await producer.openJob(j)).error?.message).toMatch(/failed its authentication/);
    }
    expect(await waitForJob(producer, c.id)).toMatchObject({ state: 'completed' });
  });

  it('a job a plain BullMQ client wrote fails with JOB_DATA_NOT_SEALED naming the fix, without a retry, and its plaintext payload is removed', async () => {
    const config = testConfig(adminUrl, [SEALED({ attempts: 3 })]);
    const queue = new Queue('sealed', { connection: client, prefix: queuePrefix(config.redis.prefix, 'sealed') });
    const marker = `foreign-${randomUUID()}`;
    const id = newJobId('sealed');
    try {
      await queue.add('ruby-service', { marker }, { jobId: id, attempts: 3 });
    } finally {
      await queue.close();
    }
    await startSupervisor({ config });
    const producer = makeProducer(config);
    const j = await waitForJob(producer, id);
    expect(j).toMatchObject({ state: 'failed', attemptsMade: 1, error: { code: 'JOB_DATA_NOT_SEALED' } });
    expect((await producer.openJob(j)).error?.message).toMatch(
      /through the HTTP API \(POST \/v1\/jobs\/sealed\) or the TypeScript producer/,
    );
    expect(await client.hget(queueKey(config.redis.prefix, 'sealed', id), 'data')).not.toContain(marker);
  });

  it('a data key rotation with jobs in flight loses none: the old version stays until no stored job is sealed under it, then retires (each component as its Redis role)', async () => {
    const base = testConfig(adminUrl, [SEALED({ concurrency: 4, warmSandboxes: 2 })], {
      secrets: {
        dataKey: { refreshSeconds: 1 },
        items: {
          'fleet-data-key': {
            kind: 'encryption-key',
            rotation: { schedule: 'weekly', rotator: { type: 'random', bytes: 32, encoding: 'hex' }, graceSeconds: 2 },
          },
        },
      },
    });
    const config: FleetConfig = { ...base, redis: { ...base.redis, prefix: PREFIX } };
    const rotation = new RotationService({
      config,
      redisUrl: roleUrl('scheduler'),
      retentionUrl: roleUrl('retention'),
      events: new FleetEventBus(),
    });
    await rotation.start();
    const producer = new Producer({ config, redis: roleUrl('api') });
    try {
      const store = localStore(config.dataDir);
      // The scheduler created the key at its start.
      expect((await store.list()).find((m) => m.name === 'fleet-data-key')?.version).toBe('1');
      const version = async (id: string): Promise<string | null> =>
        envelopeVersion(
          sealedEnvelope(
            JSON.parse((await client.hget(queueKey(config.redis.prefix, 'sealed', id), 'data')) ?? '{}'),
          ) ?? '',
        );
      const ids: string[] = [];
      for (let i = 0; i < 10; i++) ids.push((await producer.enqueue('sealed', { marker: `old-${i}` })).id);
      expect(await version(ids[0]!)).toBe('1');

      const rotated = await rotation.rotateNow('fleet-data-key');
      await vi.waitFor(async () => expect(await rotated.getState()).toBe('completed'), { timeout: 10_000 });
      const firstRetireAt = (await readRotationState(client, config.redis.prefix, 'fleet-data-key')).retiring['1'];
      expect(firstRetireAt).toBeGreaterThan(0);
      // Producers seal under the new version once they look it up again (secrets.dataKey.refreshSeconds).
      await vi.waitFor(
        async () => {
          const { id } = await producer.enqueue('sealed', { marker: `new-${ids.length}` });
          ids.push(id);
          expect(await version(id)).toBe('2');
        },
        { timeout: 5000, interval: 200 },
      );
      // Its grace window ends with ten jobs still sealed under version 1: the sweep keeps it.
      await vi.waitFor(
        async () => {
          await rotation.sweep();
          const st = await readRotationState(client, config.redis.prefix, 'fleet-data-key');
          expect(st.retiring['1']).toBeGreaterThan(firstRetireAt!);
        },
        { timeout: 10_000, interval: 250 },
      );
      expect((await store.readVersion('fleet-data-key', '1')).version).toBe('1');

      await startSupervisor({ config, redisUrl: roleUrl('worker') });
      const done = await Promise.all(ids.map((id) => waitForJob(producer, id, 20_000)));
      expect(done.map((j) => j.state)).toEqual(ids.map(() => 'completed'));
      for (const j of done) {
        const opened = await producer.openJob(j);
        expect(opened.result).toEqual({ echoed: `result-${(opened.data as { marker: string }).marker}` });
      }
      // Once no stored job uses it, version 1 retires at the next sweep after its window.
      const admin = new Queue('sealed', { connection: client, prefix: queuePrefix(PREFIX, 'sealed') });
      await admin.obliterate({ force: true });
      await admin.close();
      await vi.waitFor(
        async () => {
          await rotation.sweep();
          await expect(store.readVersion('fleet-data-key', '1')).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND' });
        },
        { timeout: 10_000, interval: 250 },
      );
    } finally {
      await producer.close();
      await rotation.stop();
    }
  });

  it("a version whose envelopes sit only in a job's log lines (past the first page) is still in use: the retirement scan reads the :logs list", async () => {
    const config = testConfig(adminUrl, [SEALED()]);
    const queue = new Queue('sealed', { connection: client, prefix: queuePrefix(config.redis.prefix, 'sealed') });
    try {
      // The hash under version 2; log lines written by a supervisor that still sealed under version 1.
      const id = newJobId('sealed');
      await queue.add('owner', { $sealed: 'fleet:v1:2:hash-envelope' }, { jobId: id });
      const logs = queueKey(config.redis.prefix, 'sealed', `${id}:logs`);
      await client.rpush(
        logs,
        ...Array.from({ length: 600 }, (_, i) => `fleet:v1:2:line-${i}`),
        'fleet:v1:1:last-line',
      );
      expect(await jobsSealedUnder(client, config, '1')).toEqual([id]);
      expect(await jobsSealedUnder(client, config, '2')).toEqual([id]);
      expect(await jobsSealedUnder(client, config, '3')).toEqual([]);
    } finally {
      await queue.obliterate({ force: true });
      await queue.close();
    }
  });

  it('the API opens the data for the job owner only; readers by scope, admins, Bull Board and the ops role see it sealed', async () => {
    const tokens = { owner: `owner-${randomUUID()}`, reader: `reader-${randomUUID()}`, admin: `admin-${randomUUID()}` };
    const config = testConfig(adminUrl, [SEALED()], {
      producers: [
        { name: 'owner', tokenSha256: sha256Hex(tokens.owner), jobTypes: ['sealed'] },
        { name: 'reader', tokenSha256: sha256Hex(tokens.reader), jobTypes: ['sealed'], read: ['sealed'] },
        { name: 'admin', tokenSha256: sha256Hex(tokens.admin), jobTypes: ['*'], admin: true },
      ],
    });
    await startSupervisor({ config });
    const producer = makeProducer(config);
    const api: Server = await listen(createApiApp({ producer }), '127.0.0.1', 0);
    const base = `http://127.0.0.1:${(api.address() as { port: number }).port}`;
    const marker = `api-${randomUUID()}`;
    try {
      const as = (who: keyof typeof tokens) => ({ authorization: `Bearer ${tokens[who]}` });
      const posted = await fetch(`${base}/v1/jobs/sealed`, {
        method: 'POST',
        headers: { ...as('owner'), 'content-type': 'application/json' },
        body: JSON.stringify({ marker }),
      });
      expect(posted.status).toBe(202);
      const { id } = (await posted.json()) as { id: string };
      const get = async (who: keyof typeof tokens): Promise<JobView> => {
        const r = await fetch(`${base}/v1/jobs/${id}`, { headers: as(who) });
        expect(r.status).toBe(200);
        return (await r.json()) as JobView;
      };
      await vi.waitFor(async () => expect((await get('owner')).state).toBe('completed'), { timeout: 10_000 });
      expect(await get('owner')).toMatchObject({
        data: { marker },
        result: { echoed: `result-${marker}` },
        progress: { step: `progress-${marker}` },
      });
      const seen: string[] = [];
      for (const who of ['reader', 'admin'] as const) {
        const view = await get(who);
        expect(sealedEnvelope(view.data)).toMatch(/^fleet:v1:/);
        seen.push(JSON.stringify(view));
      }
      const board = `${base}/admin/queues/api/queues`;
      for (const url of [`${board}?activeQueue=sealed&status=completed&page=1`, `${board}/sealed/${id}/logs`]) {
        const r = await fetch(url, { headers: as('admin') });
        expect(r.status).toBe(200);
        seen.push(await r.text());
      }
      expect(seen.join('\n')).toContain('fleet:v1:');
      expect(seen.join('\n')).not.toContain(marker);
      // The ops role (fleet job, fleet status) holds no data key: it shows the sealed form and cannot enqueue.
      const ops = new Producer({ config, dataKeys: null });
      try {
        expect(JSON.stringify(await ops.getJob(id))).not.toContain(marker);
        await expect(ops.enqueue('sealed', { marker })).rejects.toMatchObject({ code: 'DATA_KEY_UNAVAILABLE' });
      } finally {
        await ops.close();
      }
    } finally {
      api.closeAllConnections();
      await new Promise<void>((r) => api.close(() => r()));
    }
  });
});
