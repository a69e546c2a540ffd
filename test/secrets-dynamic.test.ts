/**
 * Per-job dynamic credentials: OpenBao's database engine creates a PostgreSQL user for each job
 * through the job's own token, and the user is gone however the job ends: success, failure,
 * timeout, or its supervisor SIGKILLed (another supervisor revokes what the dead one left).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FleetConfig } from '../src/config/resolve.js';
import { resolveConfig } from '../src/config/resolve.js';
import { FleetEventBus } from '../src/events.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import { capturingLogger } from './helpers/leaks.js';
import { readAudit } from '../src/secrets/audit.js';
import { JobCredentials, formatCredential } from '../src/secrets/vault-dynamic.js';
import { dynamicLeasesKey } from '../src/redis/keys.js';
import {
  FIXTURES,
  fixtureType,
  guardAgainstLeaks,
  makeProducer,
  spawnWorker,
  startSupervisor,
  testConfig,
  waitForJob,
} from './helpers/fleet.js';
import { useTestRedis } from './helpers/redis.js';
import {
  setupDatabaseEngine,
  setupDevVault,
  startPostgres,
  startVault,
  type PostgresServer,
  type VaultServer,
} from './helpers/servers.js';

describe('dynamic credentials: formatting and answers (no servers)', () => {
  it('fills {field} and {field:url}, and masks what proves but not what names', () => {
    const { value, maskAlso } = formatCredential(
      'db',
      { username: 'v-job-1', password: 'p@ss/w:rd' },
      'postgresql://{username:url}:{password:url}@db:5432/orders?u={username}',
    );
    expect(Buffer.from(value).toString()).toBe('postgresql://v-job-1:p%40ss%2Fw%3Ard@db:5432/orders?u=v-job-1');
    expect(maskAlso.map((m) => Buffer.from(m).toString())).toEqual(['p@ss/w:rd']);
    expect(Buffer.from(formatCredential('db', { username: 'u', password: 'p' }).value).toString()).toBe(
      '{"username":"u","password":"p"}',
    );
  });

  it('refuses a format naming a field the credential does not have, naming the fix', () => {
    expect(() => formatCredential('db', { username: 'u' }, '{username}:{pasword}')).toThrow(
      expect.objectContaining({
        code: 'SECRET_NOT_FOUND',
        message: expect.stringContaining('no field "pasword" (it has: username). Fix: secrets.items.db.dynamic.format'),
      }),
    );
  });

  it('refuses an answer without a lease (a KV path named as dynamic), mints once per name, and revokes once', async () => {
    const creds = new JobCredentials();
    await expect(
      creds.get('db', { path: 'secret/data/fleet/db' }, async () => ({ data: { data: { value: 'x' } } })),
    ).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND', message: expect.stringContaining('holds no lease') });
    let reads = 0;
    const read = async (): Promise<unknown> => {
      reads += 1;
      return { lease_id: 'database/creds/r/abc', lease_duration: 60, data: { username: 'u', password: 'pw-123456' } };
    };
    const a = await creds.get('db', { path: 'database/creds/r' }, read);
    const b = await creds.get('db', { path: 'database/creds/r' }, read);
    expect(reads).toBe(1);
    expect(a.value).not.toBe(b.value);
    expect(a.leaseId).toBe('database/creds/r/abc');
    const revoked: string[] = [];
    expect(await creds.end(async (id) => void revoked.push(id))).toEqual([
      { name: 'db', leaseId: 'database/creds/r/abc' },
    ]);
    expect(revoked).toEqual(['database/creds/r/abc']);
    // What the lease kept is zero-filled (the copies handed out belong to their holders).
    expect(a.maskAlso?.every((m) => m.every((x) => x === 0))).toBe(true);
  });

  it('config: dynamic needs provider "vault" and takes no rotation', () => {
    const base = { redis: { url: 'redis://127.0.0.1:1' }, jobTypes: [{ name: 't', processor: './ok.mjs' }] };
    const opts = { baseDir: FIXTURES };
    expect(() =>
      resolveConfig(
        { ...base, secrets: { items: { db: { provider: 'local', dynamic: { path: 'database/creds/r' } } } } },
        opts,
      ),
    ).toThrow(/secrets\.items\.db\.dynamic needs provider "vault"/);
    expect(() =>
      resolveConfig(
        {
          ...base,
          secrets: {
            vault: { address: 'http://127.0.0.1:1' },
            items: {
              db: {
                provider: 'vault',
                dynamic: { path: 'database/creds/r' },
                rotation: { schedule: 'daily', rotator: { type: 'random' } },
              },
            },
          },
        },
        opts,
      ),
    ).toThrow(/is dynamic and has a rotation policy/);
    expect(() =>
      resolveConfig(
        {
          ...base,
          secrets: {
            vault: { address: 'http://127.0.0.1:1' },
            items: { db: { provider: 'vault', dynamic: { path: '../sys/x' } } },
          },
        },
        opts,
      ),
    ).toThrow(/dynamic\.path/);
  });
});

const vault = await startVault();
const pg = await startPostgres();
const skipReason = 'reason' in vault ? vault.reason : 'reason' in pg ? pg.reason : null;
if (skipReason) console.warn(`SKIPPING dynamic-credential tests: ${skipReason}`);
const server = 'reason' in vault ? null : (vault as VaultServer);
const db = 'reason' in pg ? null : (pg as PostgresServer);

const redis = useTestRedis();
const ROLE = 'orders';
const PATH = `database/creds/${ROLE}`;

/** The PostgreSQL users OpenBao made (its usernames start with `v-`). */
const dynamicUsers = async (): Promise<string[]> => db!.query("select rolname from pg_roles where rolname like 'v-%'");

beforeAll(async () => {
  if (!server || !db) return;
  await setupDatabaseEngine(server, db, ROLE);
  const setup = await setupDevVault(
    server,
    [
      ['db', ['orders-db']],
      ['db-legacy', ['legacy-db']],
    ],
    [],
    new Map([
      ['orders-db', PATH],
      ['legacy-db', 'database/creds/legacy'],
    ]),
  );
  process.env.FLEET_TEST_DYN_ROLE_ID = setup.roleId;
  process.env.FLEET_TEST_DYN_SECRET_ID = setup.secretId;
}, 90_000);
afterAll(async () => {
  await server?.release();
  await db?.release();
});
guardAgainstLeaks();

function rawConfig(timeoutMs: number, extra: Record<string, string> = {}): Record<string, unknown> {
  return {
    secrets: {
      provider: 'vault',
      vault: {
        address: server!.url,
        auth: 'approle',
        roleIdEnv: 'FLEET_TEST_DYN_ROLE_ID',
        secretIdEnv: 'FLEET_TEST_DYN_SECRET_ID',
        tokenTtlMarginMs: 5000,
      },
      items: {
        'orders-db': { provider: 'vault', dynamic: { path: PATH } },
        ...Object.fromEntries(Object.entries(extra).map(([n, p]) => [n, { provider: 'vault', dynamic: { path: p } }])),
      },
    },
    jobTypes: [
      fixtureType('db', 'pg-query.mjs', {
        secrets: ['orders-db'],
        egress: [`127.0.0.1:${db!.port}`],
        timeoutMs,
        abortGraceMs: 200,
        warmSandboxes: 0,
      }),
      ...Object.keys(extra).map((n) =>
        fixtureType(`db-${n.replace(/-db$/, '')}`, 'pg-query.mjs', {
          secrets: [n],
          egress: [`127.0.0.1:${db!.port}`],
          timeoutMs,
          abortGraceMs: 200,
          warmSandboxes: 0,
        }),
      ),
    ],
  };
}

function dbConfig(timeoutMs = 8000, extra: Record<string, string> = {}): FleetConfig {
  const { jobTypes, ...rest } = rawConfig(timeoutMs, extra);
  return testConfig(redis.url, jobTypes as Parameters<typeof testConfig>[1], {
    dataDir: mkdtempSync(path.join(tmpdir(), 'fleet-dyn-')),
    ...rest,
  });
}

const job = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  host: '127.0.0.1',
  port: db!.port,
  ...extra,
});

describe.skipIf(skipReason !== null)('dynamic credentials (OpenBao database engine, real PostgreSQL)', () => {
  it('a job gets its own PostgreSQL user, queries with it, and the user is gone when the job is reported done', async () => {
    const config = dbConfig();
    const events = new FleetEventBus();
    const metrics = new FleetMetrics({ defaultMetrics: false });
    metrics.attach(events);
    const alive: number[] = [];
    events.on(
      'secret:dynamic',
      () => void metrics.dynamicLeasesAlive.get().then((g) => alive.push(g.values[0]?.value ?? 0)),
    );
    await startSupervisor({ config, events });
    const p = makeProducer(config);
    const a = await p.enqueue('db', job());
    const b = await p.enqueue('db', job());
    const [ja, jb] = [await waitForJob(p, a.id), await waitForJob(p, b.id)];
    expect(ja.state, JSON.stringify(ja.error)).toBe('completed');
    expect(jb.state).toBe('completed');
    const ra = ja.result as { user: string; orders: number };
    const rb = jb.result as { user: string; orders: number };
    expect(ra.orders).toBe(3);
    expect(ra.user).toMatch(/^v-/);
    // One user per job, not one shared credential.
    expect(rb.user).not.toBe(ra.user);
    // Revoked before the job was reported done: no polling needed.
    expect(await dynamicUsers()).toEqual([]);
    await expect.poll(() => alive.at(-1)).toBe(0);
    expect(Math.max(...alive)).toBeGreaterThanOrEqual(1);

    const audit = await readAudit(redis.client, config.redis.prefix);
    const granted = audit.filter((r) => r.action === 'access' && r.secret === 'orders-db' && r.outcome === 'granted');
    const revoked = audit.filter((r) => r.action === 'revoke' && r.secret === 'orders-db');
    expect(granted).toHaveLength(2);
    expect(granted.every((r) => r.version?.startsWith(`${PATH}/`))).toBe(true);
    expect(revoked.map((r) => [r.jobId, r.version, r.outcome]).sort()).toEqual(
      granted.map((r) => [r.jobId, r.version, 'granted']).sort(),
    );
    // The ledger holds nothing once the tokens are revoked.
    expect(await redis.client.hlen(dynamicLeasesKey(config.redis.prefix))).toBe(0);
  });

  it('masks the password on its own (not only the whole credential) in results', async () => {
    const config = dbConfig();
    await startSupervisor({ config });
    const p = makeProducer(config);
    const j = await waitForJob(p, (await p.enqueue('db', job({ echoPassword: true }))).id);
    expect(j.state).toBe('completed');
    expect((j.result as { password: string }).password).toBe('***');
  });

  it('a failed job and a timed-out job leave no user behind', async () => {
    const config = dbConfig(2500);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const failed = await waitForJob(p, (await p.enqueue('db', job({ fail: true }))).id);
    expect(failed.state).toBe('failed');
    expect(failed.error?.message).toContain('failing on purpose');
    expect(await dynamicUsers()).toEqual([]);

    const slow = await p.enqueue('db', job({ holdMs: 60_000 }));
    await expect.poll(dynamicUsers, { timeout: 10_000 }).toHaveLength(1);
    const timedOut = await waitForJob(p, slow.id);
    expect(timedOut.error?.code).toBe('TIMEOUT');
    expect(await dynamicUsers()).toEqual([]);
  });

  it('a SIGKILLed supervisor: another supervisor revokes its job token (and the user) once its heartbeat is stale', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-dyn-kill-'));
    const prefix = `dk${Date.now().toString(36)}`;
    const raw = rawConfig(60_000);
    const types = (raw.jobTypes as { processor: string }[]).map((t) => ({
      ...t,
      processor: path.join(FIXTURES, t.processor),
    }));
    const { writeFileSync } = await import('node:fs');
    const file = path.join(dir, 'fleet.config.json');
    writeFileSync(
      file,
      JSON.stringify({
        ...raw,
        jobTypes: types,
        dataDir: dir,
        redis: { prefix },
        supervisor: { metricsPort: 0, heartbeatMs: 500 },
      }),
    );
    const { jobTypes: _declared, ...rest } = raw;
    const config = testConfig(redis.url, types as Parameters<typeof testConfig>[1], {
      ...rest,
      dataDir: dir,
      redis: { url: redis.url, prefix },
    });
    // Spawned right before the try whose finally kills it (a throw before would leave it running).
    const { child, output } = spawnWorker(file, { REDIS_URL: redis.url });
    try {
      await expect.poll(output, { timeout: 30_000 }).toContain('"supervisor running"');
      const p = makeProducer(config);
      const held = await p.enqueue('db', job({ holdMs: 60_000 }));
      await expect.poll(dynamicUsers, { timeout: 15_000 }).toHaveLength(1);
      await expect.poll(() => redis.client.hlen(dynamicLeasesKey(prefix))).toBe(1);
      child.kill('SIGKILL');
      const killedAt = Date.now();
      // The ledger is in Redis, where the worker role writes: a note made unreadable still gets its
      // token revoked (whose token it is comes from Vault's own metadata, not from the note).
      const [accessor] = await redis.client.hkeys(dynamicLeasesKey(prefix));
      await redis.client.hset(dynamicLeasesKey(prefix), accessor!, 'junk');

      // A supervisor started right away still sees the dead one's heartbeat as current; it
      // revokes the token once that heartbeat is three beats old.
      await startSupervisor({ config });
      await expect.poll(dynamicUsers, { timeout: 20_000, interval: 100 }).toEqual([]);
      const tookMs = Date.now() - killedAt;
      // The job token's own TTL is the job's timeout (60 s) plus 5 s: the sweep came well before it.
      expect(tookMs).toBeLessThan(30_000);
      console.info(`dynamic credential of a SIGKILLed supervisor's job revoked ${tookMs} ms after the kill`);
      expect(await redis.client.hlen(dynamicLeasesKey(prefix))).toBe(0);
      const audit = await readAudit(redis.client, prefix);
      expect(audit).toContainEqual(
        expect.objectContaining({ action: 'revoke-orphaned', jobId: held.id, outcome: 'granted' }),
      );
      await p.cancel(held.id).catch(() => undefined);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a job cannot keep its user alive by owning something (default privileges): the recommended statements drop it', async () => {
    const config = dbConfig();
    await startSupervisor({ config });
    const p = makeProducer(config);
    const j = await waitForJob(
      p,
      (await p.enqueue('db', job({ sql: 'ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC' }))).id,
    );
    expect(j.state, JSON.stringify(j.error)).toBe('completed');
    expect(await dynamicUsers()).toEqual([]);
    const audit = await readAudit(redis.client, config.redis.prefix);
    expect(audit.filter((r) => r.action === 'revoke' && r.jobId === j.id).map((r) => r.outcome)).toEqual(['granted']);
  });

  it('a revocation the backend cannot carry out is audited as an error, logged and counted, not hidden', async () => {
    // A role with the engine's default revocation (a plain DROP ROLE), which a job defeats.
    await setupDatabaseEngine(server!, db!, 'legacy', { defaultRevocation: true });
    const config = dbConfig(8000, { 'legacy-db': 'database/creds/legacy' });
    const { logger, lines } = capturingLogger();
    const events = new FleetEventBus();
    const metrics = new FleetMetrics({ defaultMetrics: false });
    metrics.attach(events);
    await startSupervisor({ config, events, logger });
    const p = makeProducer(config);
    const j = await waitForJob(
      p,
      (
        await p.enqueue(
          'db-legacy',
          job({ secret: 'legacy-db', sql: 'ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC' }),
        )
      ).id,
    );
    expect(j.state, JSON.stringify(j.error)).toBe('completed');
    const left = await dynamicUsers();
    try {
      expect(left).toHaveLength(1);
      const audit = await readAudit(redis.client, config.redis.prefix);
      const revoke = audit.find((r) => r.action === 'revoke' && r.jobId === j.id);
      expect(revoke).toMatchObject({ outcome: 'error', reason: expect.stringContaining('SECRET_REVOKE_FAILED') });
      expect(lines.join('')).toContain('a dynamic credential was NOT destroyed at job end');
      const counted = await metrics.dynamicRevokeFailures.get();
      expect(counted.values).toContainEqual(
        expect.objectContaining({ value: 1, labels: { job_type: 'db-legacy', secret: 'legacy-db' } }),
      );
    } finally {
      for (const u of left) await db!.query(`DROP OWNED BY "${u}"; DROP ROLE IF EXISTS "${u}"`);
      await fetch(`${server!.url}/v1/sys/leases/revoke-prefix/database/creds/legacy`, {
        method: 'PUT',
        headers: { 'X-Vault-Token': server!.rootToken },
      });
    }
  });

  it("a note written into the ledger through Redis cannot get a live job's token or a foreign token revoked", async () => {
    const config = dbConfig(20_000);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const held = await p.enqueue('db', job({ holdMs: 4000 }));
    await expect.poll(dynamicUsers, { timeout: 15_000 }).toHaveLength(1);
    const key = dynamicLeasesKey(config.redis.prefix);
    const [accessor] = await redis.client.hkeys(key);
    // The live job's note, claimed for a supervisor that never lived; and a note for a token that
    // is none of the fleet's (another application's).
    await redis.client.hset(
      key,
      accessor!,
      JSON.stringify({ owner: 'ghost', jobId: 'x', jobType: 'db', expiresAt: 1 }),
    );
    const foreign = (await (
      await fetch(`${server!.url}/v1/auth/token/create`, {
        method: 'POST',
        headers: { 'X-Vault-Token': server!.rootToken },
        body: JSON.stringify({ policies: ['default'], ttl: '10m', display_name: 'other-app' }),
      })
    ).json()) as { auth: { client_token: string; accessor: string } };
    await redis.client.hset(
      key,
      foreign.auth.accessor,
      JSON.stringify({ owner: 'ghost', jobId: 'y', jobType: 'db', expiresAt: Date.now() + 60_000 }),
    );
    // The sweep (each heartbeat) forgets the foreign note without revoking its token...
    await expect.poll(() => redis.client.hexists(key, foreign.auth.accessor), { timeout: 10_000 }).toBe(0);
    const lookup = await fetch(`${server!.url}/v1/auth/token/lookup-self`, {
      headers: { 'X-Vault-Token': foreign.auth.client_token },
    });
    expect(lookup.status).toBe(200);
    // ...and leaves the live job's token alone: its job completes with its user.
    const done = await waitForJob(p, held.id, 20_000);
    expect(done.state, JSON.stringify(done.error)).toBe('completed');
    expect(await dynamicUsers()).toEqual([]);
  });
});
