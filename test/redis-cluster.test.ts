import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFleet, type FleetProcess } from '../src/app.js';
import { silentLogger } from '../src/observability/logger.js';
import { sha256Hex } from '../src/api/auth.js';
import { Producer } from '../src/producers/producer.js';
import { REDIS_ROLES, rolePasswordEnv, setupRoleUsers, urlWithCredential, type RedisRole } from '../src/redis/acl.js';
import { connectRedis, ensureReady } from '../src/redis/connection.js';
import { verifyAuditTrail } from '../src/secrets/audit.js';
import { loadAuditKeys } from '../src/secrets/audit-chain.js';
import { readAudit } from '../src/secrets/audit.js';
import { readRotationState } from '../src/rotation/state.js';
import { fixtureType, guardAgainstLeaks, testConfig, waitForJob, localStore } from './helpers/fleet.js';
import { HAS_REDIS_CLI, startRedisCluster, type TestCluster } from './helpers/redis-cluster.js';

if (!HAS_REDIS_CLI)
  console.warn(
    'SKIPPING Redis Cluster tests: redis-cli not found. Fix: apt-get install -y redis-server (it ships redis-cli).',
  );

const TOKEN = 'cluster-admin-token-0123456789';
guardAgainstLeaks('file');
let cluster: TestCluster | undefined;
let url: string;
let fleet: FleetProcess;
let producer: Producer;
let admin: Cluster;
let roleUrl: (role: RedisRole) => string;

const TYPES = ['alpha', 'bravo', 'charlie', 'delta', 'echo'];

beforeAll(async () => {
  if (!HAS_REDIS_CLI) return;
  cluster = await startRedisCluster();
  url = cluster.url;
  const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-cluster-data-'));
  await localStore(dataDir).write('api-key', Buffer.from('cluster-secret-value-123'));
  const config = testConfig(
    url,
    [
      ...TYPES.map((t) => fixtureType(t, 'ok.mjs', { isolation: 'pool' })),
      fixtureType('reader', 'secret-reader.mjs', { secrets: ['api-key'] }),
      fixtureType('deaf', 'ignores-abort.mjs', { timeoutMs: 20_000 }),
    ],
    {
      dataDir,
      api: { port: 0 },
      producers: [{ name: 'ops', tokenSha256: sha256Hex(TOKEN), jobTypes: ['*'], admin: true }],
      secrets: { items: { 'api-key': { rotation: { schedule: '1s', rotator: { type: 'random', bytes: 16 } } } } },
    },
  );
  // The fleet runs with its per-role ACL users, written on every node by `fleet redis setup`'s code.
  admin = new Cluster(cluster.ports.map((port) => ({ host: '127.0.0.1', port })));
  await admin.ping();
  const setup = await setupRoleUsers(admin, { prefix: config.redis.prefix });
  expect(setup.nodes).toBe(3);
  for (const role of REDIS_ROLES) process.env[rolePasswordEnv(role)] = setup.credentials[role]!.password;
  roleUrl = (role) => urlWithCredential(url, setup.credentials[role]!);
  fleet = await startFleet({ config, role: 'all', logger: silentLogger });
  producer = new Producer({ config, redis: roleUrl('api') });
}, 60_000);

afterAll(async () => {
  for (const role of REDIS_ROLES) delete process.env[rolePasswordEnv(role)];
  await producer?.close();
  await fleet?.release();
  admin?.disconnect();
  await cluster?.release();
}, 60_000);

describe.skipIf(!HAS_REDIS_CLI)('on a real 3-master Redis Cluster', () => {
  it('enqueues over HTTP and processes jobs of every type; queues spread over shards', async () => {
    const ids: string[] = [];
    for (const t of TYPES) {
      const r = await fetch(`${fleet.apiUrl}/v1/jobs/${t}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ t }),
      });
      expect(r.status).toBe(202);
      ids.push(((await r.json()) as { id: string }).id);
    }
    for (const id of ids) expect((await waitForJob(producer, id)).state).toBe('completed');
    // Each queue lives in one slot (hash tag {type}); the types land on more than one master.
    const slots = (await admin.cluster('SLOTS')) as unknown as [number, number, [string, number]][];
    const owner = (slot: number): number => slots.find(([a, b]) => slot >= a && slot <= b)![2][1];
    const owners = new Set<number>();
    for (const t of TYPES)
      owners.add(
        owner(Number(await admin.cluster('KEYSLOT', `${fleet.producer!.config.redis.prefix}:{${t}}:${t}:wait`))),
      );
    expect(owners.size).toBeGreaterThan(1);
  });

  it('hands scoped secrets to jobs, audits them, and rotates on schedule', async () => {
    const job = await waitForJob(producer, (await producer.enqueue('reader', { names: ['api-key'] })).id);
    expect(job.state).toBe('completed');
    const prefix = producer.config.redis.prefix;
    await expect
      .poll(async () => (await readRotationState(admin, prefix, 'api-key')).rotations, {
        timeout: 10_000,
        message: 'a scheduled rotation of api-key',
      })
      .toBeGreaterThanOrEqual(1);
    const audit = await readAudit(admin, prefix, { secret: 'api-key' });
    expect(audit.some((a) => a.action === 'access' && a.jobId === job.id)).toBe(true);
    expect(audit.some((a) => a.action === 'rotate:promote')).toBe(true);
  });

  it('runs every component as its own ACL user on every node; the audit chain verifies; a role is refused elsewhere', async () => {
    for (const node of admin.nodes('master')) {
      const users = (await node.call('ACL', 'USERS')) as string[];
      for (const role of REDIS_ROLES) expect(users).toContain(`fleet-${role}`);
    }
    const prefix = producer.config.redis.prefix;
    const ops = connectRedis(roleUrl('ops'), 'producer');
    try {
      await ensureReady(ops);
      const keys = await loadAuditKeys(localStore(producer.config.dataDir), 'audit-mac-key', { create: false });
      const report = await verifyAuditTrail(ops, prefix, keys);
      expect(report.firstBreak).toBeNull();
      expect(report.records).toBeGreaterThan(0);
      await expect(ops.xtrim(`${prefix}:{audit}`, 'MAXLEN', 0)).rejects.toThrow(/NOPERM/);
    } finally {
      ops.disconnect();
    }
    const worker = connectRedis(roleUrl('worker'), 'producer');
    try {
      await ensureReady(worker);
      await expect(worker.hset(`${prefix}:rotation:{api-key}`, 'current', '9')).rejects.toThrow(/NOPERM/);
    } finally {
      worker.disconnect();
    }
  });

  it('cancels an active job through the control channel', async () => {
    const { id } = await producer.enqueue('deaf', {});
    await expect
      .poll(async () => (await producer.getJob(id)).state, { timeout: 10_000, message: `job ${id} to be active` })
      .toBe('active');
    expect(await producer.cancel(id)).toMatchObject({ outcome: 'cancelling' });
    expect((await waitForJob(producer, id)).error?.code).toBe('CANCELLED');
  });
});
