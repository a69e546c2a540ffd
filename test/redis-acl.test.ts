/**
 * Redis ACL users per role, on a real redis-server that runs with them (as `npm start`'s does):
 * each role does its own job end to end and is refused everything else.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../src/cli/main.js';
import { redisRoleChecks } from '../src/cli/doctor/redis-checks.js';
import { FleetEventBus } from '../src/events.js';
import { sha256Hex } from '../src/api/auth.js';
import { listen } from '../src/api/api-server.js';
import { createApiApp } from '../src/api/http-api.js';
import { Producer } from '../src/producers/producer.js';
import {
  ensureEmbeddedUsers,
  RedisAccess,
  REDIS_ROLES,
  setupRoleUsers,
  urlWithCredential,
  type RedisRole,
} from '../src/redis/acl.js';
import { startEmbeddedRedis, type EmbeddedRedis } from '../src/redis/embedded-redis.js';
import {
  auditHeadsKey,
  auditStreamKey,
  queuePrefix,
  rotationQueuePrefix,
  rotationStateKey,
  supervisorsKey,
} from '../src/redis/keys.js';
import { RotationService } from '../src/rotation/rotation-service.js';
import { readAudit, verifyAuditTrail } from '../src/secrets/audit.js';
import { loadAuditKeys } from '../src/secrets/audit-chain.js';
import { readSupervisorStatuses } from '../src/workers/supervisor-status.js';
import {
  fixtureType,
  guardAgainstLeaks,
  startSupervisor,
  testConfig,
  until,
  waitForJob,
  localStore,
} from './helpers/fleet.js';
import { awaitNext, waitForBullJob } from './helpers/wait.js';

const PREFIX = 'acl';
const ADMIN_TOKEN = 'acl-admin-token-0123456789abcdef';
guardAgainstLeaks();

let server: EmbeddedRedis;
let users: ReturnType<typeof ensureEmbeddedUsers>;
const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-acl-'));
const clients: Redis[] = [];
const url = (role: RedisRole): string => urlWithCredential(server.url, users.roles[role]!);
const as = (role: RedisRole): Redis => {
  const c = new Redis(url(role), { maxRetriesPerRequest: 1 });
  clients.push(c);
  return c;
};

beforeAll(async () => {
  users = ensureEmbeddedUsers(dataDir);
  server = await startEmbeddedRedis({
    dataDir: path.join(dataDir, 'redis'),
    persistent: false,
    acl: { prefix: PREFIX, users },
  });
});
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await server?.release();
});

function aclConfig(extra: Record<string, unknown> = {}): ReturnType<typeof testConfig> {
  const config = testConfig(
    server.url,
    [fixtureType('echo', 'ok.mjs'), fixtureType('reader', 'secret-reader.mjs', { secrets: ['api-key'] })],
    {
      dataDir,
      api: { port: 0 },
      producers: [{ name: 'ops', tokenSha256: sha256Hex(ADMIN_TOKEN), jobTypes: ['*'], admin: true }],
      secrets: {
        items: { 'api-key': { rotation: { schedule: '1s', rotator: { type: 'random', bytes: 16 } } } },
        audit: { maxEntries: 12, retentionEveryMs: 500 },
      },
      ...extra,
    },
  );
  // The ACL users are built for one prefix; the test config takes a unique one otherwise.
  return { ...config, redis: { ...config.redis, prefix: PREFIX } };
}

describe('Redis ACL users per role', () => {
  it('each role does its job end to end: api enqueues, worker runs a job with its secret, scheduler rotates and retention trims, ops reads status, audit and Bull Board', async () => {
    const config = aclConfig();
    await localStore(dataDir).write('api-key', Buffer.from('acl-secret-value-0123'));
    const events = new FleetEventBus();
    await startSupervisor({ config, redisUrl: url('worker'), events });
    const rotation = new RotationService({
      config,
      redisUrl: url('scheduler'),
      retentionUrl: url('retention'),
      events,
    });
    await rotation.start();
    const producer = new Producer({ config, redis: url('api') });
    const board = new Producer({ config, redis: url('ops'), name: 'bull-board' });
    try {
      const ids: string[] = [];
      for (let i = 0; i < 20; i++) ids.push((await producer.enqueue('reader', { names: ['api-key'] })).id);
      ids.push((await producer.enqueue('echo', { hi: 1 })).id);
      for (const id of ids) expect((await waitForJob(producer, id)).state).toBe('completed');

      // Rotation (scheduler role) on its 1 s schedule, and retention (retention role) trims the
      // audit stream to 12 records behind a signed checkpoint.
      const ops = as('ops');
      await until('a scheduled rotation of api-key audited as rotate:promote', async () =>
        (await readAudit(ops, PREFIX, { secret: 'api-key' })).some((a) => a.action === 'rotate:promote'),
      );
      expect((await readAudit(ops, PREFIX, { secret: 'api-key' })).some((a) => a.action === 'rotate:promote')).toBe(
        true,
      );
      let trimmed: Awaited<ReturnType<RotationService['trimAudit']>> = null;
      await until('audit retention to trim behind a checkpoint', async () =>
        Boolean((trimmed = await rotation.trimAudit())?.checkpoint),
      );
      expect(trimmed).toMatchObject({ ok: true });
      expect(await ops.xlen(auditStreamKey(PREFIX))).toBeLessThanOrEqual(40);
      const left = await readAudit(ops, PREFIX, { limit: 100 });
      expect(left.map((a) => a.action)).toContain('checkpoint');

      // ops: status, audit, job counts and the chain, read only.
      const keys = await loadAuditKeys(localStore(dataDir), config.secrets.audit.macKey, { create: false });
      const report = await verifyAuditTrail(ops, PREFIX, keys);
      expect(report.firstBreak).toBeNull();
      expect(report.checkpoint).not.toBeNull();
      expect((await readSupervisorStatuses(ops, PREFIX, 500)).live).toHaveLength(1);
      const q = new Queue('reader', { connection: ops, prefix: queuePrefix(PREFIX, 'reader') });
      expect((await q.getJobCounts('completed')).completed).toBe(20);
      await expect(q.add('x', {})).rejects.toThrow(/can't run this command|NOPERM/);
      await q.close();

      // Bull Board through the ops role.
      const app = createApiApp({ producer, boardProducer: board });
      const api = await listen(app, '127.0.0.1', 0);
      try {
        const port = (api.address() as { port: number }).port;
        const res = await fetch(
          `http://127.0.0.1:${port}${config.api.bullBoard.path}/api/queues?activeQueue=reader&status=completed&page=1`,
          { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } },
        );
        expect(res.status).toBe(200);
        const body = (await res.json()) as { queues: { name: string; counts: Record<string, number> }[] };
        expect(body.queues.find((x) => x.name === 'reader')?.counts.completed).toBe(20);
      } finally {
        api.close();
        api.closeAllConnections();
      }
    } finally {
      await rotation.stop();
      await producer.close();
      await board.close();
    }
  }, 60_000);

  it('every role is refused what it must not do, and only retention may trim the audit stream', async () => {
    const audit = auditStreamKey(PREFIX);
    const everywhere: [string, ...string[]][] = [
      ['FLUSHALL'],
      ['FLUSHDB'],
      ['CONFIG', 'GET', 'maxmemory'],
      ['CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lru'],
      ['KEYS', '*'],
      ['DEBUG', 'SLEEP', '0'],
      ['MODULE', 'LIST'],
      ['SCRIPT', 'FLUSH'],
      ['FUNCTION', 'FLUSH'],
      ['ACL', 'SETUSER', 'evil', 'on', '>x', '+@all', '~*'],
      ['ACL', 'LIST'],
      ['SHUTDOWN', 'NOSAVE'],
      ['SWAPDB', '0', '1'],
      ['REPLICAOF', 'NO', 'ONE'],
      ['XDEL', audit, '0-1'],
      ['DEL', audit],
      ['UNLINK', audit],
      ['RENAME', audit, `${audit}-moved`],
      ['EXPIRE', audit, '1'],
      ['SET', audit, 'x'],
      ['DEL', auditHeadsKey(PREFIX)],
    ];
    const extra: Record<RedisRole, [string, ...string[]][]> = {
      api: [
        ['XTRIM', audit, 'MAXLEN', '0'],
        ['XADD', audit, '*', 'forged', '1'],
        ['HSET', supervisorsKey(PREFIX), 'x', '1'],
        ['HSET', rotationStateKey(PREFIX, 'api-key'), 'current', '9'],
        ['LPUSH', `${rotationQueuePrefix(PREFIX)}:rotation:wait`, 'x'],
      ],
      worker: [
        ['XTRIM', audit, 'MAXLEN', '0'],
        ['HSET', rotationStateKey(PREFIX, 'api-key'), 'current', '9'],
        ['LPUSH', `${rotationQueuePrefix(PREFIX)}:rotation:wait`, 'x'],
        ['PUBLISH', 'elsewhere', 'x'],
      ],
      scheduler: [
        ['XTRIM', audit, 'MAXLEN', '0'],
        ['LPUSH', `${queuePrefix(PREFIX, 'echo')}:echo:wait`, 'x'],
        ['HSET', supervisorsKey(PREFIX), 'x', '1'],
      ],
      ops: [
        ['XTRIM', audit, 'MAXLEN', '0'],
        ['XADD', audit, '*', 'forged', '1'],
        ['LPUSH', `${queuePrefix(PREFIX, 'echo')}:echo:wait`, 'x'],
        ['HSET', supervisorsKey(PREFIX), 'x', '1'],
        ['PUBLISH', `${PREFIX}:control`, 'x'],
      ],
      retention: [
        ['LPUSH', `${queuePrefix(PREFIX, 'echo')}:echo:wait`, 'x'],
        ['HSET', supervisorsKey(PREFIX), 'x', '1'],
      ],
    };
    const allowed: string[] = [];
    for (const role of REDIS_ROLES) {
      const c = as(role);
      expect(String(await c.call('ACL', 'WHOAMI'))).toBe(`fleet-${role}`);
      for (const cmd of [...everywhere, ...extra[role]]) {
        try {
          await c.call(cmd[0], ...cmd.slice(1));
          allowed.push(`${role}: ${cmd.join(' ')}`);
        } catch (err) {
          if (!/NOPERM|DEBUG command not allowed/.test((err as Error).message))
            allowed.push(`${role}: ${cmd.join(' ')} → ${(err as Error).message}`);
        }
      }
    }
    expect(allowed).toEqual([]);
    // The retention path may trim (MINID 0 removes nothing).
    expect(await as('retention').xtrim(audit, 'MINID', '0')).toBe(0);
  });

  it('fleet doctor passes each role that has exactly its rights, and fails one with more or one running as default', async () => {
    const config = aclConfig();
    const access = new RedisAccess(server.url, users.roles, users.admin);
    const checks = await redisRoleChecks(config, access, true);
    expect(checks.map((c) => c.status)).toEqual(['PASS', 'PASS', 'PASS', 'PASS', 'PASS']);
    const admin = new Redis(urlWithCredential(server.url, users.admin));
    clients.push(admin);
    await admin.call('ACL', 'SETUSER', 'fleet-api', '+@all', '~*');
    try {
      const again = await redisRoleChecks(config, access, true);
      expect(again[0]).toMatchObject({ status: 'FAIL', check: 'redis role api' });
      expect(again[0]!.detail).toMatch(
        /may run CONFIG, KEYS, ACL, FUNCTION, XDEL on the audit stream, XTRIM on the audit stream, RENAME on the audit stream/,
      );
    } finally {
      await setupRoleUsers(admin, { prefix: PREFIX, roles: ['api'], passwords: { api: users.roles.api! } });
    }
    expect((await redisRoleChecks(config, access, true))[0]!.status).toBe('PASS');
    const asDefault = new RedisAccess(server.url, { ...users.roles, worker: users.admin });
    expect((await redisRoleChecks(config, asDefault, true))[1]).toMatchObject({
      status: 'FAIL',
      detail: 'runs as the `default` user',
    });
    const shared = new RedisAccess(server.url, {});
    expect(
      (await redisRoleChecks(config, shared, true)).every(
        (c) => c.status === 'FAIL' && /no credentials of its own/.test(c.detail),
      ),
    ).toBe(true);
  });
});

describe('rotating a role password as a rotation policy (rotator redis-acl)', () => {
  it('sets the new password beside the old, tests it, and removes the old one when the previous version retires', async () => {
    const store = localStore(dataDir);
    const original = users.roles.ops!.password;
    await store.write('redis-ops-password', Buffer.from(original));
    const config = aclConfig({
      secrets: {
        items: {
          'redis-ops-password': {
            kind: 'other',
            rotation: { schedule: 'weekly', graceSeconds: 1, rotator: { type: 'redis-acl', role: 'ops' } },
          },
        },
      },
    });
    const canLogIn = async (password: string): Promise<boolean> => {
      const c = new Redis(urlWithCredential(server.url, { username: 'fleet-ops', password }), {
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
        lazyConnect: true,
      });
      c.on('error', () => undefined);
      try {
        await c.connect();
        return String(await c.call('ACL', 'WHOAMI')) === 'fleet-ops';
      } catch {
        return false;
      } finally {
        c.disconnect();
      }
    };
    const events = new FleetEventBus();
    const rotation = new RotationService({
      config,
      redisUrl: url('scheduler'),
      retentionUrl: url('retention'),
      events,
    });
    const saved = process.env.FLEET_REDIS_ADMIN_URL;
    process.env.FLEET_REDIS_ADMIN_URL = urlWithCredential(server.url, users.admin);
    await rotation.start();
    try {
      const job = await rotation.rotateNow('redis-ops-password');
      await waitForBullJob(job, 'completed');
      const fresh = (await store.readCurrent('redis-ops-password')).value;
      const next = Buffer.from(fresh).toString('utf8');
      expect(next).not.toBe(original);
      // Within the grace window both work; after it, only the new one.
      expect(await canLogIn(original)).toBe(true);
      expect(await canLogIn(next)).toBe(true);
      // After the grace window (1 s) the previous version retires, and the old password with it.
      await until('the old ops password to be refused once its grace window is over', async () => {
        await rotation.sweep();
        return !(await canLogIn(original));
      });
      expect(await canLogIn(next)).toBe(true);
      // The role's rules are unchanged: still refused what ops may not do.
      const ops = new Redis(urlWithCredential(server.url, { username: 'fleet-ops', password: next }));
      clients.push(ops);
      await expect(ops.call('XTRIM', auditStreamKey(PREFIX), 'MAXLEN', '0')).rejects.toThrow(/NOPERM/);
      // Without the admin URL the rotation fails at its set step, naming the variable.
      delete process.env.FLEET_REDIS_ADMIN_URL;
      const failed = awaitNext(events, 'rotation:finished', (e) => e.secret === 'redis-ops-password');
      const failing = await rotation.rotateNow('redis-ops-password');
      // Its first attempt fails (later attempts wait out their backoff).
      expect(await failed).toMatchObject({ ok: false, step: 'set' });
      let failedReason: string | undefined;
      await until('BullMQ to record the failed attempt', async () =>
        Boolean((failedReason = (await rotation.queue.getJob(failing.id!))?.failedReason)),
      );
      expect(failedReason).toMatch(/FLEET_REDIS_ADMIN_URL/);
      expect(await canLogIn(next)).toBe(true);
    } finally {
      await rotation.stop();
      if (saved === undefined) delete process.env.FLEET_REDIS_ADMIN_URL;
      else process.env.FLEET_REDIS_ADMIN_URL = saved;
      const admin = new Redis(urlWithCredential(server.url, users.admin));
      clients.push(admin);
      await setupRoleUsers(admin, { prefix: PREFIX, roles: ['ops'], passwords: { ops: users.roles.ops! } });
    }
  }, 60_000);
});

describe('fleet redis setup', () => {
  let plain: EmbeddedRedis;
  const adminPassword = 'setup-admin-password-0123456789';
  beforeAll(async () => {
    plain = await startEmbeddedRedis({
      dataDir: mkdtempSync(path.join(tmpdir(), 'fleet-acl-setup-')),
      persistent: false,
      args: ['--requirepass', adminPassword],
    });
  });
  afterAll(async () => {
    await plain?.release();
  });

  async function cli(
    args: string[],
    env: Record<string, string> = {},
  ): Promise<{ code: number; out: string; err: string }> {
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-acl-cli-'));
    const file = path.join(dir, 'fleet.config.json');
    writeFileSync(
      file,
      JSON.stringify({
        dataDir: dir,
        redis: { url: `redis://default:${adminPassword}@127.0.0.1:${plain.port}`, prefix: 'setup' },
        jobTypes: [{ name: 'echo', processor: './x.mjs' }],
      }),
    );
    writeFileSync(path.join(dir, 'x.mjs'), 'export default () => 1;');
    const saved = { ...process.env };
    Object.assign(process.env, env);
    let out = '';
    let err = '';
    try {
      const code = await main([...args, '--config', file], {
        out: (s) => (out += `${s}\n`),
        err: (s) => (err += `${s}\n`),
      });
      return { code, out, err };
    } finally {
      for (const k of Object.keys(env)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  }

  /** Who Redis says we are with these credentials, or the reason it refused them. */
  const whoami = async (user: string, password: string): Promise<string> => {
    const c = new Redis({
      port: plain.port,
      host: '127.0.0.1',
      username: user,
      password,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    let refused = '';
    c.on('error', (err: Error) => (refused ||= err.message));
    try {
      await c.connect();
      return String(await c.call('ACL', 'WHOAMI'));
    } catch (err) {
      return refused || (err as Error).message;
    } finally {
      c.disconnect();
    }
  };

  it('writes the role users with the admin identity and prints their passwords; --keep-old then --drop-old rotate one without downtime', async () => {
    const first = await cli(['redis', 'setup']);
    expect(first.code, first.err).toBe(0);
    const pw = (out: string, role: string): string =>
      new RegExp(`FLEET_REDIS_${role.toUpperCase()}_PASSWORD=(\\w+)`).exec(out)![1]!;
    for (const role of REDIS_ROLES) expect(await whoami(`fleet-${role}`, pw(first.out, role))).toBe(`fleet-${role}`);
    expect(first.out).toMatch(/ACL SAVE failed|no aclfile/);

    const oldApi = pw(first.out, 'api');
    const rotated = await cli(['redis', 'setup', '--role', 'api', '--keep-old']);
    expect(rotated.code, rotated.err).toBe(0);
    const newApi = pw(rotated.out, 'api');
    expect(newApi).not.toBe(oldApi);
    expect(await whoami('fleet-api', oldApi)).toBe('fleet-api');
    expect(await whoami('fleet-api', newApi)).toBe('fleet-api');
    // Other roles untouched.
    expect(await whoami('fleet-worker', pw(first.out, 'worker'))).toBe('fleet-worker');

    const dropped = await cli(['redis', 'setup', '--role', 'api', '--drop-old'], { FLEET_REDIS_API_PASSWORD: newApi });
    expect(dropped.code, dropped.err).toBe(0);
    expect(await whoami('fleet-api', oldApi)).toMatch(/WRONGPASS/);
    expect(await whoami('fleet-api', newApi)).toBe('fleet-api');

    const refused = await cli(['redis', 'setup', '--role', 'api', '--drop-old']);
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(/FLEET_REDIS_API_PASSWORD/);
  });
});

describe('npm start (embedded Redis)', () => {
  it('runs its private Redis with the role users: passwords in a 0600 file, default locked, each component as its own user, the CLI too', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-acl-start-'));
    const file = path.join(dir, 'fleet.config.json');
    writeFileSync(
      file,
      JSON.stringify({
        dataDir: path.join(dir, 'data'),
        api: { port: 0 },
        supervisor: { metricsPort: 0 },
        jobTypes: [{ name: 'echo', processor: path.resolve('test/fixtures/ok.mjs'), sandbox: 'thread' }],
      }),
    );
    const savedUrl = process.env.REDIS_URL;
    delete process.env.REDIS_URL;
    const { loadConfig } = await import('../src/config/load.js');
    const { startFleet } = await import('../src/app.js');
    const { silentLogger } = await import('../src/observability/logger.js');
    const config = await loadConfig({ path: file });
    const fleet = await startFleet({ config, role: 'all', logger: silentLogger });
    try {
      const usersFile = path.join(dir, 'data', 'redis', 'users.json');
      const { statSync, readFileSync } = await import('node:fs');
      expect(statSync(usersFile).mode & 0o777).toBe(0o600);
      const saved = JSON.parse(readFileSync(usersFile, 'utf8')) as ReturnType<typeof ensureEmbeddedUsers>;
      // Without a password nothing works; the admin sees each component connected as its own user.
      const { createConnection } = await import('node:net');
      const port = Number(new URL(fleet.redisUrl).port);
      const reply = await new Promise<string>((resolve, reject) => {
        const s = createConnection(port, '127.0.0.1', () => s.write('GET x\r\n'));
        s.once('data', (d) => {
          resolve(d.toString());
          s.destroy();
        });
        s.once('error', reject);
      });
      expect(reply).toMatch(/^-NOAUTH/);
      const admin = new Redis(urlWithCredential(fleet.redisUrl, saved.admin));
      clients.push(admin);
      const self = String(await admin.call('CLIENT', 'ID'));
      const others = String(await admin.call('CLIENT', 'LIST'))
        .split('\n')
        .filter((l) => l && !l.startsWith(`id=${self} `));
      const users = new Set(others.map((l) => / user=(\S+)/.exec(l)?.[1]));
      for (const role of ['api', 'worker', 'scheduler', 'retention', 'ops']) expect(users).toContain(`fleet-${role}`);
      expect(users).not.toContain('default');
      // The CLI finds the embedded Redis and its users: enqueue as api, status as ops.
      let out = '';
      const io = { out: (s: string) => (out += `${s}\n`), err: (s: string) => (out += `${s}\n`) };
      expect(await main(['enqueue', 'echo', '{"hi":1}', '--config', file], io)).toBe(0);
      const id = out.trim().split('\n').pop()!;
      await until(`fleet job ${id} to show it completed`, async () => {
        out = '';
        await main(['job', id, '--json', '--config', file], io);
        return out.includes('"completed"');
      });
      out = '';
      expect(await main(['status', '--json', '--config', file], io)).toBe(0);
      expect(JSON.parse(out).supervisors).toHaveLength(1);
    } finally {
      await fleet.release();
      if (savedUrl !== undefined) process.env.REDIS_URL = savedUrl;
    }
  }, 60_000);
});
