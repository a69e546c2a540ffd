import { createHash } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FleetConfig } from '../src/config/resolve.js';
import { readAudit } from '../src/secrets/audit.js';
import { ManualClock, type Clock } from '../src/clock.js';
import { VaultProvider } from '../src/secrets/vault-provider.js';
import { silentLogger } from '../src/observability/logger.js';
import {
  fixtureType,
  guardAgainstLeaks,
  makeProducer,
  startSupervisor,
  testConfig,
  until,
  vaultSecrets,
  waitForJob,
} from './helpers/fleet.js';
import { capturingLogger, scanForLeaks } from './helpers/leaks.js';
import { CONTRACT_JOB_TYPE, CONTRACT_SECRETS, providerContract } from './helpers/provider-contract.js';
import { startTestRedis } from './helpers/redis.js';
import { setupDevVault, startVault, type VaultServer } from './helpers/servers.js';
import { waitForBullJob } from './helpers/wait.js';

const vault = await startVault();
if ('reason' in vault) console.warn(`SKIPPING Vault tests: ${vault.reason}`);
else console.info(`Vault tests use ${vault.via} at ${vault.url}`);
const server = 'reason' in vault ? null : (vault as VaultServer);

const SECRETS = { 'a-key': 'sk-a-0123456789abcdef', 'b-key': 'sk-b-fedcba9876543210' };
const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

let redis: Awaited<ReturnType<typeof startTestRedis>>;
let rotatorCreds: { roleId: string; secretId: string };
beforeAll(async () => {
  redis = await startTestRedis();
  if (!server) return;
  const setup = await setupDevVault(
    server,
    [
      ['reader', ['a-key']],
      ['other', ['b-key']],
      ['retrier', ['a-key']],
      [CONTRACT_JOB_TYPE, [...CONTRACT_SECRETS]],
    ],
    ['a-key'],
  );
  rotatorCreds = setup.rotator;
  process.env.FLEET_TEST_VAULT_ROLE_ID = setup.roleId;
  process.env.FLEET_TEST_VAULT_SECRET_ID = setup.secretId;
  for (const [name, value] of Object.entries(SECRETS))
    await root('POST', `secret/data/fleet/${name}`, { data: { value } });
}, 60_000);
afterAll(async () => {
  await redis?.release();
  await server?.release();
});
guardAgainstLeaks();

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- Vault's answers are probed field by field
async function root(method: string, p: string, body?: unknown): Promise<Record<string, any>> {
  const r = await fetch(`${server!.url}/v1/${p}`, {
    method,
    headers: { 'X-Vault-Token': server!.rootToken },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await r.text();
  if (!r.ok) throw Object.assign(new Error(`${method} ${p}: ${r.status} ${text}`), { status: r.status });
  return text ? JSON.parse(text) : {};
}

/** Tokens minted for jobs that are still alive in Vault. */
async function liveJobTokens(): Promise<string[]> {
  const list = await root('GET', 'auth/token/accessors?list=true');
  const live: string[] = [];
  for (const accessor of list.data.keys as string[]) {
    const info = await root('POST', 'auth/token/lookup-accessor', { accessor }).catch(() => null);
    if (info?.data?.meta?.job_id) live.push(info.data.meta.job_id);
  }
  return live;
}

function vaultConfig(extraTypes: Parameters<typeof fixtureType>[] = []): FleetConfig {
  return testConfig(
    redis.url,
    [
      fixtureType('reader', 'secret-reader.mjs', { secrets: ['a-key'], timeoutMs: 1500, abortGraceMs: 100 }),
      fixtureType('other', 'secret-reader.mjs', { secrets: ['b-key'] }),
      ...extraTypes.map((a) => fixtureType(...a)),
    ],
    {
      dataDir: mkdtempSync(path.join(tmpdir(), 'fleet-vault-')),
      secrets: {
        provider: 'vault',
        vault: vaultSecrets(server!.url, { tokenTtlMarginMs: 5000 }),
      },
    },
  );
}

/** Job tokens minted ahead (not a job's yet): accessor and policies. */
async function spareTokens(): Promise<{ accessor: string; policies: string[] }[]> {
  const list = await root('GET', 'auth/token/accessors?list=true');
  const out: { accessor: string; policies: string[] }[] = [];
  for (const accessor of list.data.keys as string[]) {
    const info = await root('POST', 'auth/token/lookup-accessor', { accessor }).catch(() => null);
    if (info?.data?.meta?.spare === 'true') out.push({ accessor, policies: info.data.policies });
  }
  return out;
}

function provider(config: FleetConfig, spareTokens = 0, tokenTtlMarginMs?: number, clock?: Clock): VaultProvider {
  const v = config.secrets.vault!;
  return new VaultProvider({
    address: server!.url,
    mount: v.mount,
    prefix: v.prefix,
    auth: {
      method: 'approle',
      roleId: process.env.FLEET_TEST_VAULT_ROLE_ID!,
      secretId: process.env.FLEET_TEST_VAULT_SECRET_ID!,
      mount: 'approle',
    },
    tokenRole: v.tokenRole,
    policyPrefix: v.policyPrefix,
    tokenTtlMarginMs: tokenTtlMarginMs ?? v.tokenTtlMarginMs,
    readsPerSecret: v.readsPerSecret,
    requestTimeoutMs: v.requestTimeoutMs,
    spareTokens,
    logger: silentLogger,
    ...(clock ? { clock } : {}),
  });
}

describe.skipIf(!server)('provider contract: vault', () => {
  // Writes and version reads take a privileged token (the supervisor's AppRole can read no secret);
  // leases still get job tokens minted through the token role, scoped by Vault to the contract type.
  providerContract({
    open: () => {
      const v = vaultConfig().secrets.vault!;
      return Promise.resolve({
        provider: new VaultProvider({
          address: server!.url,
          mount: v.mount,
          prefix: v.prefix,
          auth: { method: 'token', token: server!.rootToken },
          tokenRole: v.tokenRole,
          policyPrefix: v.policyPrefix,
          tokenTtlMarginMs: v.tokenTtlMarginMs,
          readsPerSecret: v.readsPerSecret,
          requestTimeoutMs: v.requestTimeoutMs,
          logger: silentLogger,
        }),
      });
    },
  });
});

describe.skipIf(!server)('Vault provider (real Vault API)', () => {
  it('a job reads its secret through a token minted for it, which is revoked when the job ends', async () => {
    const config = vaultConfig();
    const { logger, lines } = capturingLogger();
    await startSupervisor({ config, logger });
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('reader', { names: ['a-key'] })).id);
    expect(job.state).toBe('completed');
    expect(job.result).toEqual({ 'a-key': { length: SECRETS['a-key'].length, sha256: sha(SECRETS['a-key']) } });
    expect(await liveJobTokens()).toEqual([]);
    const r = new Redis(redis.url);
    const audit = await readAudit(r, config.redis.prefix);
    r.disconnect();
    expect(audit[0]).toMatchObject({
      outcome: 'granted',
      secret: 'a-key',
      provider: 'vault',
      version: '1',
      jobId: job.id,
    });
    expect(await scanForLeaks(redis.url, Object.values(SECRETS), { logs: lines.join('') })).toEqual([]);
  });

  it("Vault itself refuses a job token another type's secret (least privilege is not only our check)", async () => {
    const config = vaultConfig();
    const prov = provider(config);
    const lease = await prov.lease({ jobId: 'reader.x', jobType: 'reader', names: ['a-key'], ttlMs: 5000 });
    expect(Buffer.from((await lease.read('a-key')).value).toString()).toBe(SECRETS['a-key']);
    // VaultProvider does not filter names itself: this read goes to Vault with the job token.
    await expect(lease.read('b-key')).rejects.toMatchObject({ code: 'SECRET_PERMISSION_DENIED' });
    expect(await liveJobTokens()).toEqual(['reader.x']);
    await lease.release();
    expect(await liveJobTokens()).toEqual([]);
    await expect(lease.read('a-key')).rejects.toMatchObject({ code: 'SECRET_AUTH_EXPIRED' });
    await prov.close();
  });

  it("spare job tokens: a job start takes one minted ahead; each carries only its type's policy, serves one job, and shutdown revokes the unused", async () => {
    // Supervisors of earlier tests keep spares of their own: only this provider's count here.
    const others = new Set((await spareTokens()).map((t) => t.accessor));
    const mine = async () => (await spareTokens()).filter((t) => !others.has(t.accessor));
    const prov = provider(vaultConfig(), 1);
    const lease = (jobId: string) => prov.lease({ jobId, jobType: 'reader', names: ['a-key'], ttlMs: 5000 });
    const first = await lease('reader.1');
    await first.release();
    await until('one spare token', async () => (await mine()).length === 1);
    const [spare] = await mine();
    expect(spare!.policies).toEqual(['fleet-job-reader']);
    const second = await lease('reader.2');
    expect(Buffer.from((await second.read('a-key')).value).toString()).toBe(SECRETS['a-key']);
    await expect(second.read('b-key')).rejects.toMatchObject({ code: 'SECRET_PERMISSION_DENIED' });
    await second.release();
    // The second job ran on the spare: releasing it revoked that very token, and a new spare waits.
    await expect(root('POST', 'auth/token/lookup-accessor', { accessor: spare!.accessor })).rejects.toMatchObject({
      status: 400,
    });
    await until('one spare token', async () => (await mine()).length === 1);
    expect((await mine())[0]!.accessor).not.toBe(spare!.accessor);
    expect(await liveJobTokens()).toEqual([]);
    await prov.close();
    expect(await mine()).toEqual([]);
    // Without a TTL margin a spare could never cover a whole job: none is minted.
    const noMargin = provider(vaultConfig(), 1, 0);
    await (await noMargin.lease({ jobId: 'reader.3', jobType: 'reader', names: ['a-key'], ttlMs: 5000 })).release();
    // Nothing to wait for: the claim is that no spare is minted, so this gives a background mint
    // (which takes tens of ms against this Vault) the time it would need to show up.
    await new Promise((r) => setTimeout(r, 300));
    expect(await mine()).toEqual([]);
    await noMargin.close();
  });

  it('a spare older than tokenTtlMarginMs is revoked unused and the job gets a fresh token (the clock moved, no sleep)', async () => {
    const others = new Set((await spareTokens()).map((t) => t.accessor));
    const mine = async () => (await spareTokens()).filter((t) => !others.has(t.accessor));
    const clock = new ManualClock();
    const prov = provider(vaultConfig(), 1, 5000, clock);
    const lease = (jobId: string) => prov.lease({ jobId, jobType: 'reader', names: ['a-key'], ttlMs: 5000 });
    await (await lease('reader.old-1')).release();
    await until('one spare token', async () => (await mine()).length === 1);
    const [spare] = await mine();
    // Still young: a job would take it. Past the margin, it would not cover a whole job.
    clock.advance(5001);
    const job = await lease('reader.old-2');
    expect(Buffer.from((await job.read('a-key')).value).toString()).toBe(SECRETS['a-key']);
    expect(await liveJobTokens()).toEqual(['reader.old-2']);
    await until('the old spare revoked', async () => {
      const r = await root('POST', 'auth/token/lookup-accessor', { accessor: spare!.accessor }).catch(
        (e: { status?: number }) => e.status,
      );
      return r === 400;
    });
    await job.release();
    await prov.close();
  });

  it("fleet doctor's probe confirms a type's policy, and names the gap when it does not cover a secret", async () => {
    const prov = provider(vaultConfig());
    expect(await prov.probeJobPolicy('reader', ['a-key'])).toBeNull();
    expect(await prov.probeJobPolicy('reader', ['b-key'])).toContain('a reader job token cannot read "b-key"');
    expect(await liveJobTokens()).toEqual([]);
    await prov.close();
  });

  it("the supervisor's own AppRole token cannot read any secret", async () => {
    const login = await fetch(`${server!.url}/v1/auth/approle/login`, {
      method: 'POST',
      body: JSON.stringify({
        role_id: process.env.FLEET_TEST_VAULT_ROLE_ID,
        secret_id: process.env.FLEET_TEST_VAULT_SECRET_ID,
      }),
    }).then((r) => r.json() as Promise<{ auth: { client_token: string } }>);
    const read = await fetch(`${server!.url}/v1/secret/data/fleet/a-key`, {
      headers: { 'X-Vault-Token': login.auth.client_token },
    });
    expect(read.status).toBe(403);
  });

  it('revokes the job token after a timeout and after a crash too', async () => {
    const config = vaultConfig();
    await startSupervisor({ config });
    const p = makeProducer(config);
    const spun = await p.enqueue('reader', { names: ['a-key'], spin: true });
    const crashed = await p.enqueue('reader', { names: ['a-key'], exit: true });
    const a = await waitForJob(p, spun.id);
    const b = await waitForJob(p, crashed.id);
    expect([a.error?.code, b.error?.code]).toEqual(['TIMEOUT', 'SANDBOX_CRASHED']);
    expect(await liveJobTokens()).toEqual([]);
  });

  it("after the supervisor's Vault login expires, it logs in again and the next job still gets its secret", async () => {
    const config = vaultConfig();
    const events: string[] = [];
    const sup = await startSupervisor({ config });
    sup.events.on('secret:accessed', (e) => events.push(e.outcome));
    const p = makeProducer(config);
    expect((await waitForJob(p, (await p.enqueue('reader', { names: ['a-key'] })).id)).state).toBe('completed');
    // Revoke every AppRole login (the supervisor's token included), as an expiry would.
    await root('PUT', 'sys/leases/revoke-prefix/auth/approle/login');
    const after = await waitForJob(p, (await p.enqueue('reader', { names: ['a-key'] })).id);
    expect(after.state).toBe('completed');
    expect(after.attemptsMade).toBe(1);
    expect(events).toEqual(['granted', 'granted']);
  });

  it('a rotation token can write the one secret it rotates and nothing else (enforced by Vault)', async () => {
    const rotator = new VaultProvider({
      address: server!.url,
      mount: 'secret',
      prefix: 'fleet',
      auth: { method: 'approle', roleId: rotatorCreds.roleId, secretId: rotatorCreds.secretId, mount: 'approle' },
      tokenRole: 'fleet-job',
      policyPrefix: 'fleet-job-',
      tokenTtlMarginMs: 5000,
      readsPerSecret: 4,
      requestTimeoutMs: 5000,
      logger: silentLogger,
    });
    // The rotator's own token cannot write secrets at all.
    await expect(rotator.writePending('a-key', Buffer.from('nope-nope-nope'))).rejects.toMatchObject({
      code: 'SECRET_PERMISSION_DENIED',
    });
    const scope = await rotator.scopedTo('a-key');
    await expect(scope.provider.writePending('b-key', Buffer.from('nope-nope-nope'))).rejects.toMatchObject({
      code: 'SECRET_PERMISSION_DENIED',
    });
    await expect(scope.provider.readVersion('b-key', '1')).rejects.toMatchObject({ code: 'SECRET_PERMISSION_DENIED' });
    const pending = await scope.provider.writePending('a-key', Buffer.from('pending-value-123'));
    await scope.provider.retire('a-key', pending.version);
    await scope.release();
    await rotator.close();
  });

  it('a rotation whose Vault rotation token cannot be minted is a failed rotation: recorded, reported, retried', async () => {
    const { RotationService } = await import('../src/rotation/rotation-service.js');
    const { readRotationState } = await import('../src/rotation/state.js');
    const { FleetEventBus } = await import('../src/events.js');
    // A rotator identity Vault does not know: the login behind the rotation-token mint fails.
    process.env.FLEET_TEST_VAULT_BAD_ROLE_ID = '00000000-0000-4000-8000-000000000000';
    process.env.FLEET_TEST_VAULT_BAD_SECRET_ID = '00000000-0000-4000-8000-000000000001';
    const config = testConfig(redis.url, [fixtureType('reader', 'secret-reader.mjs', { secrets: ['a-key'] })], {
      dataDir: mkdtempSync(path.join(tmpdir(), 'fleet-vault-rot-bad-')),
      secrets: {
        provider: 'vault',
        vault: vaultSecrets(server!.url, {
          rotatorRoleIdEnv: 'FLEET_TEST_VAULT_BAD_ROLE_ID',
          rotatorSecretIdEnv: 'FLEET_TEST_VAULT_BAD_SECRET_ID',
        }),
        items: { 'a-key': { rotation: { schedule: 'weekly', rotator: { type: 'random', bytes: 16 }, attempts: 1 } } },
      },
    });
    const events = new FleetEventBus();
    const finished: { ok: boolean; step?: string }[] = [];
    events.on('rotation:finished', (e) => finished.push(e));
    const svc = new RotationService({ config, redisUrl: redis.url, events });
    await svc.start().catch(() => undefined);
    try {
      const job = await svc.rotateNow('a-key');
      await waitForBullJob(job, 'failed');
      // The scheduler's first tick may try too: every attempt is a recorded failure.
      expect(finished.length).toBeGreaterThan(0);
      expect(finished.every((e) => !e.ok)).toBe(true);
      const stateClient = new Redis(redis.url);
      const state = await readRotationState(stateClient, config.redis.prefix, 'a-key');
      stateClient.disconnect();
      expect(state).toMatchObject({ lastOutcome: 'failed' });
      expect(state.failures).toBe(finished.length);
    } finally {
      await svc.stop();
    }
  });

  it('rotates a Vault secret with the fleet-rotator AppRole: pending path, promotion, previous version readable, then destroyed', async () => {
    const { RotationService } = await import('../src/rotation/rotation-service.js');
    const { FleetEventBus } = await import('../src/events.js');
    process.env.FLEET_TEST_VAULT_ROTATOR_ROLE_ID = rotatorCreds.roleId;
    process.env.FLEET_TEST_VAULT_ROTATOR_SECRET_ID = rotatorCreds.secretId;
    const config = testConfig(redis.url, [fixtureType('reader', 'secret-reader.mjs', { secrets: ['a-key'] })], {
      dataDir: mkdtempSync(path.join(tmpdir(), 'fleet-vault-rot-')),
      secrets: {
        provider: 'vault',
        vault: vaultSecrets(server!.url, {
          rotatorRoleIdEnv: 'FLEET_TEST_VAULT_ROTATOR_ROLE_ID',
          rotatorSecretIdEnv: 'FLEET_TEST_VAULT_ROTATOR_SECRET_ID',
        }),
        items: {
          'a-key': { rotation: { schedule: 'weekly', rotator: { type: 'random', bytes: 16 }, graceSeconds: 1 } },
        },
      },
    });
    const before = (await root('GET', 'secret/metadata/fleet/a-key')).data.current_version as number;
    const svc = new RotationService({ config, redisUrl: redis.url, events: new FleetEventBus() });
    await svc.start();
    try {
      const job = await svc.rotateNow('a-key');
      await waitForBullJob(job, 'completed');
      const meta = await root('GET', 'secret/metadata/fleet/a-key');
      expect(meta.data.current_version).toBe(before + 1);
      const previous = await root('GET', `secret/data/fleet/a-key?version=${before}`);
      expect(previous.data.data.value).toBe(SECRETS['a-key']);
      await expect(root('GET', 'secret/metadata/fleet-pending/a-key')).rejects.toMatchObject({ status: 404 });
      // Jobs now get the new value.
      await startSupervisor({ config });
      const p = makeProducer(config);
      const res = await waitForJob(p, (await p.enqueue('reader', { names: ['a-key'] })).id);
      expect((res.result as Record<string, { length: number }>)['a-key']!.length).toBe(22);
      // The previous version is destroyed once its grace window (1 s) is over.
      await until(`Vault version ${before} of a-key to be destroyed after the grace window`, async () => {
        await svc.sweep();
        const meta = await root('GET', 'secret/metadata/fleet/a-key');
        return meta.data.versions[String(before)].destroyed === true;
      });
    } finally {
      await svc.stop();
      // Restore the value other tests expect.
      await root('POST', 'secret/data/fleet/a-key', { data: { value: SECRETS['a-key'] } });
    }
  });

  it('while Vault is down, jobs fail retryably with a message naming Vault, and the supervisor keeps running', async () => {
    const config = vaultConfig([
      ['retrier', 'secret-reader.mjs', { secrets: ['a-key'], attempts: 2, backoff: { type: 'fixed', delayMs: 50 } }],
    ]);
    const sup = await startSupervisor({ config });
    const p = makeProducer(config);
    await waitForJob(p, (await p.enqueue('retrier', { names: ['a-key'] })).id);
    await server!.kill();
    const job = await waitForJob(p, (await p.enqueue('retrier', { names: ['a-key'] })).id, 30_000);
    expect(job.state).toBe('failed');
    expect(job.error!.code).toBe('SECRET_PROVIDER_UNAVAILABLE');
    expect(job.error!.message).toContain('Vault is unreachable');
    // Retryable: both attempts were made.
    expect(job.attemptsMade).toBe(2);
    expect(sup.state).toBe('running');
  });
});
