import { createHash } from 'node:crypto';
import { LocalProvider } from '../src/secrets/local-provider.js';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import type { FleetConfig } from '../src/config/resolve.js';
import type { JobTypeInput } from '../src/config/schema.js';
import { readSecretStats } from '../src/secrets/audit.js';
import { encodings, SecretMask } from '../src/secrets/secret-mask.js';
import { fixtureType, makeProducer, startSupervisor, testConfig, waitForJob, localStore } from './helpers/fleet.js';
import { capturingLogger, scanForLeaks } from './helpers/leaks.js';
import { providerContract } from './helpers/provider-contract.js';
import { waitForAudit } from './helpers/wait.js';
import { describe, expect, it, vi, type TestRedis } from './helpers/fixture.js';

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** A config using the local provider in a fresh data dir, with the given secrets stored. */
async function withLocalSecrets(
  redis: TestRedis,
  types: JobTypeInput[],
  secrets: Record<string, string>,
): Promise<{ config: FleetConfig; provider: LocalProvider }> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-secrets-'));
  const config = testConfig(redis.url, types, { dataDir });
  const provider = localStore(dataDir, 3);
  for (const [name, value] of Object.entries(secrets)) await provider.write(name, Buffer.from(value));
  return { config, provider };
}

describe('secret masking', () => {
  it('masks the raw value and its base64, hex, URL and JSON-escaped forms', () => {
    const m = new SecretMask();
    const value = 'p@ss w/rd"42';
    m.add(Buffer.from(value));
    const b64 = Buffer.from(value).toString('base64');
    const text = `a ${value} b ${b64} c ${encodeURIComponent(value)} d ${Buffer.from(value).toString('hex')} e ${JSON.stringify(value)}`;
    const masked = m.text(text);
    for (const form of encodings(Buffer.from(value))) expect(masked).not.toContain(form);
    expect(masked).toBe('a *** b *** c *** d *** e "***"');
    expect(m.value({ deep: [{ s: `x${value}y` }] })).toEqual({ deep: [{ s: 'x***y' }] });
  });

  it('leaves very short values alone rather than shredding output', () => {
    const m = new SecretMask();
    m.add(Buffer.from('ab'));
    expect(m.text('abc abd')).toBe('abc abd');
  });
});

describe('local provider (dev store)', () => {
  it('keeps versions, seals each with its name and version, and generates a 0600 key', async ({ redis }) => {
    const { config, provider } = await withLocalSecrets(redis, [fixtureType('t', 'ok.mjs')], {
      'api-key': 'first-value',
    });
    await provider.write('api-key', Buffer.from('second-value'));
    const lease = await provider.lease({ jobId: 'j', jobType: 't', names: ['api-key'], ttlMs: 1000 });
    const v = await lease.read('api-key');
    expect(Buffer.from(v.value).toString()).toBe('second-value');
    expect(v.version).toBe('2');
    expect(Buffer.from((await provider.readVersion('api-key', '1')).value).toString()).toBe('first-value');
    expect(statSync(path.join(config.dataDir, 'master.key')).mode & 0o777).toBe(0o600);
    expect(readFileSync(path.join(config.dataDir, 'secrets.enc.json'), 'utf8')).not.toContain('value');
    expect(await provider.list()).toEqual([expect.objectContaining({ name: 'api-key', version: '2' })]);
  });

  it('fails loudly on a tampered ciphertext or one moved to another name', async ({ redis }) => {
    const { config, provider } = await withLocalSecrets(redis, [fixtureType('t', 'ok.mjs')], {
      a: 'value-of-a',
      b: 'value-of-b',
    });
    const file = path.join(config.dataDir, 'secrets.enc.json');
    const store = JSON.parse(readFileSync(file, 'utf8'));
    store.secrets.b.versions[0].ct = store.secrets.a.versions[0].ct;
    store.secrets.b.versions[0].iv = store.secrets.a.versions[0].iv;
    store.secrets.b.versions[0].tag = store.secrets.a.versions[0].tag;
    writeFileSync(file, JSON.stringify(store));
    const lease = await provider.lease({ jobId: 'j', jobType: 't', names: ['a', 'b'], ttlMs: 1000 });
    await expect(lease.read('b')).rejects.toMatchObject({ code: 'SECRET_INTEGRITY' });
    expect(Buffer.from((await lease.read('a')).value).toString()).toBe('value-of-a');
    await expect(lease.read('nope')).rejects.toMatchObject({ code: 'SECRET_PERMISSION_DENIED' });
  });
});

describe('provider contract: local', () => {
  providerContract({
    open: () => Promise.resolve({ provider: localStore(mkdtempSync(path.join(tmpdir(), 'fleet-contract-'))) }),
  });
});

describe('secrets in jobs', () => {
  it('hands a declared secret to the job, audits the access and leaves no value alive', async ({ redis }) => {
    const { config } = await withLocalSecrets(
      redis,
      [fixtureType('reader', 'secret-reader.mjs', { secrets: ['api-key'] })],
      {
        'api-key': 'sk-live-abcdef123456',
      },
    );
    const sup = await startSupervisor({ config });
    let alive = 0;
    sup.events.on('secret:values', (e) => (alive += e.delta));
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('reader', { names: ['api-key'] })).id);
    expect(job.state).toBe('completed');
    expect(job.result).toEqual({ 'api-key': { length: 20, sha256: sha('sk-live-abcdef123456') } });
    expect(alive).toBe(0);
    const r = new Redis(redis.url);
    const audit = await waitForAudit(r, config.redis.prefix, {}, 1);
    expect(audit).toEqual([
      expect.objectContaining({
        outcome: 'granted',
        secret: 'api-key',
        version: '1',
        jobId: job.id,
        jobType: 'reader',
        workerId: sup.id,
        provider: 'local',
        action: 'access',
      }),
    ]);
    expect(audit[0]!.latencyMs).toBeGreaterThanOrEqual(0);
    expect(await readSecretStats(r, config.redis.prefix, ['api-key'])).toEqual([
      expect.objectContaining({ granted: 1, denied: 0, lastVersion: '1' }),
    ]);
    r.disconnect();
  });

  it('when one of several secrets fails, the values already fetched are zero-filled and the values-alive gauge never goes negative', async ({
    redis,
  }) => {
    const { config } = await withLocalSecrets(
      redis,
      [fixtureType('two', 'secret-reader.mjs', { secrets: ['present', 'absent'], isolation: 'job' })],
      { present: 'value-that-was-fetched-1' },
    );
    const fetched: Uint8Array[] = [];
    const lease = LocalProvider.prototype.lease;
    const spy = vi.spyOn(LocalProvider.prototype, 'lease').mockImplementation(async function (
      this: LocalProvider,
      req,
    ) {
      const real = await lease.call(this, req);
      return {
        read: async (name: string) => {
          const v = await real.read(name);
          fetched.push(v.value);
          return v;
        },
        release: () => real.release(),
      };
    });
    try {
      const sup = await startSupervisor({ config });
      let alive = 0;
      let lowest = 0;
      sup.events.on('secret:values', (e) => {
        alive += e.delta;
        lowest = Math.min(lowest, alive);
      });
      const p = makeProducer(config);
      const job = await waitForJob(p, (await p.enqueue('two', { names: ['present', 'absent'] })).id);
      expect(job.error?.code).toBe('SECRET_NOT_FOUND');
      expect(fetched).toHaveLength(1);
      expect(fetched[0]!.every((b) => b === 0)).toBe(true);
      expect(alive).toBe(0);
      expect(lowest).toBe(0);
    } finally {
      spy.mockRestore();
    }
  });

  it('denies an undeclared secret with SecretScopeError, audits the denial, and never fetches it', async ({
    redis,
  }) => {
    const { config } = await withLocalSecrets(
      redis,
      [
        fixtureType('nosy', 'secret-undeclared.mjs', { secrets: ['mine'] }),
        fixtureType('plain', 'secret-undeclared.mjs', { attempts: 1 }),
      ],
      { mine: 'value-mine-1234', theirs: 'value-theirs-5678' },
    );
    const sup = await startSupervisor({ config });
    const denials: string[] = [];
    sup.events.on('secret:accessed', (e) => e.outcome === 'denied' && denials.push(`${e.jobType}:${e.secret}`));
    const p = makeProducer(config);
    const a = await waitForJob(p, (await p.enqueue('nosy', { name: 'theirs' })).id);
    expect(a.result).toEqual({ got: false, name: 'SecretScopeError', code: 'SECRET_SCOPE' });
    const b = await waitForJob(p, (await p.enqueue('plain', { name: 'theirs', rethrow: true })).id);
    expect(b.state).toBe('failed');
    expect(b.error).toMatchObject({ code: 'SECRET_SCOPE' });
    expect(b.attemptsMade).toBe(1);
    expect(b.error!.message).toContain('may not read secret "theirs"');
    expect(
      await new Redis(redis.url).keys(`${config.redis.prefix}:audit-stats:*theirs*`).finally(() => undefined),
    ).toEqual([]);
    // "theirs" is in the store but no type declares it: a name the config does not know is audited
    // and counted in one bucket (a sandbox picks these names; each would be a key and a series).
    expect(denials).toEqual(['nosy:(undeclared)', 'plain:(undeclared)']);
    const r = new Redis(redis.url);
    const denied = await waitForAudit(r, config.redis.prefix, { deniedOnly: true }, 2);
    expect(denied.map((d) => [d.jobType, d.secret, d.reason])).toEqual([
      ['plain', '(undeclared)', 'SECRET_SCOPE: "theirs"'],
      ['nosy', '(undeclared)', 'SECRET_SCOPE: "theirs"'],
    ]);
    r.disconnect();
  });

  it('masks the value in logs, console, stdout, progress, result and errors; a leak scan finds nothing', async ({
    redis,
  }) => {
    const value = 'hunter2-Sup3r/Secret?&=';
    const { config } = await withLocalSecrets(
      redis,
      [fixtureType('leaky', 'secret-leaker.mjs', { secrets: ['db-password'], attempts: 1 })],
      { 'db-password': value },
    );
    const { logger, lines } = capturingLogger();
    await startSupervisor({ config, logger });
    const p = makeProducer(config);
    const ok = await waitForJob(p, (await p.enqueue('leaky', { name: 'db-password' })).id);
    const bad = await waitForJob(p, (await p.enqueue('leaky', { name: 'db-password', throw: true })).id);
    expect(ok.state).toBe('completed');
    expect(ok.result).toMatchObject({ raw: '***', b64: '***', url: '***' });
    expect(ok.progress).toMatchObject({ leaked: '***', hex: '***' });
    expect(bad.error!.message).toBe('failed with *** and ***');
    const logText = lines.join('');
    expect(logText).toContain('raw ***');
    expect(logText).toContain('"source":"console"');
    const hits = await scanForLeaks(redis.url, [value], { logs: logText, results: JSON.stringify([ok, bad]) });
    expect(hits).toEqual([]);
  });

  it('zero-fills the bytes handed to a job when it ends', async ({ redis }) => {
    const { config } = await withLocalSecrets(
      redis,
      [fixtureType('keeper', 'secret-keeper.mjs', { secrets: ['k'], isolation: 'pool', concurrency: 1 })],
      { k: 'keep-me-if-you-can' },
    );
    await startSupervisor({ config });
    const p = makeProducer(config);
    await waitForJob(p, (await p.enqueue('keeper', { name: 'k' })).id);
    const second = await waitForJob(p, (await p.enqueue('keeper', { name: 'k' })).id);
    expect(second.result).toEqual({ previous: { length: 18, allZero: true } });
  });

  it('fails with SECRET_NOT_FOUND naming the secret and the fix, without retrying', async ({ redis }) => {
    const { config } = await withLocalSecrets(
      redis,
      [fixtureType('reader', 'secret-reader.mjs', { secrets: ['missing-key'], attempts: 3 })],
      {},
    );
    await startSupervisor({ config });
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('reader', { names: ['missing-key'] })).id);
    expect(job.state).toBe('failed');
    expect(job.attemptsMade).toBe(1);
    expect(job.error!.message).toContain('secret "missing-key" is not in the local store');
    expect(job.error!.message).toContain('fleet secrets set missing-key');
  });

  it("keeps the supervisor's environment out of the sandbox", async ({ redis }) => {
    process.env.VAULT_TOKEN_FOR_TEST = 'hvs.supervisor-only';
    const config = testConfig(redis.url, [fixtureType('probe', 'env-probe.mjs')]);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('probe', {})).id);
    delete process.env.VAULT_TOKEN_FOR_TEST;
    expect((job.result as { env: string[] }).env).not.toContain('VAULT_TOKEN_FOR_TEST');
  });
});
