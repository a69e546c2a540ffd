import { createHash } from 'node:crypto';
import path from 'node:path';
import { CreateKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAudit } from '../src/secrets/audit.js';
import { KmsProvider } from '../src/secrets/kms-provider.js';
import {
  FIXTURES,
  fixtureType,
  guardAgainstLeaks,
  makeProducer,
  runFleet,
  startSupervisor,
  testConfig,
  waitForJob,
  writeJsonConfig,
} from './helpers/fleet.js';
import { capturingLogger, scanForLeaks } from './helpers/leaks.js';
import { providerContract } from './helpers/provider-contract.js';
import { startTestRedis, uniquePrefix } from './helpers/redis.js';
import { startKms, useLocalAwsCredentials, type TestServer } from './helpers/servers.js';
import { waitForBullJob } from './helpers/wait.js';

useLocalAwsCredentials();
const kms = await startKms();
if ('reason' in kms) console.warn(`SKIPPING KMS tests: ${kms.reason}`);
else console.info(`KMS tests use ${kms.via} at ${kms.url}`);
const server = 'reason' in kms ? null : (kms as TestServer);

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
let redis: Awaited<ReturnType<typeof startTestRedis>>;
let r: Redis;
let keyId: string;

beforeAll(async () => {
  redis = await startTestRedis();
  r = new Redis(redis.url);
  if (!server) return;
  const client = new KMSClient({ region: 'us-east-1', endpoint: server.url });
  keyId = (await client.send(new CreateKeyCommand({ Description: 'fleet tests' }))).KeyMetadata!.KeyId!;
  client.destroy();
}, 60_000);
afterAll(async () => {
  r?.disconnect();
  await redis?.release();
  await server?.release();
});
guardAgainstLeaks();

function provider(prefix: string): KmsProvider {
  return new KmsProvider({
    keyId,
    region: 'us-east-1',
    endpoint: server!.url,
    redis: r,
    keyPrefix: prefix,
    keepVersions: 3,
    requestTimeoutMs: 5000,
  });
}

describe.skipIf(!server)('provider contract: kms', () => {
  providerContract({ open: () => Promise.resolve({ provider: provider(uniquePrefix()) }) });
});

describe.skipIf(!server)('KMS provider (real KMS API)', () => {
  it('stores only envelope ciphertext in Redis; a job decrypts its secret with the bound context', async () => {
    const value = 'enc-key-material-0123456789';
    const config = testConfig(redis.url, [fixtureType('signer', 'secret-reader.mjs', { secrets: ['signing-key'] })], {
      secrets: { provider: 'kms', kms: { keyId, endpoint: server!.url, region: 'us-east-1' } },
    });
    const prov = provider(config.redis.prefix);
    expect(await prov.write('signing-key', Buffer.from(value))).toEqual({ version: '1' });
    const { logger, lines } = capturingLogger();
    await startSupervisor({ config, logger });
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('signer', { names: ['signing-key'] })).id);
    expect(job.result).toEqual({ 'signing-key': { length: value.length, sha256: sha(value) } });
    const audit = await readAudit(r, config.redis.prefix);
    expect(audit[0]).toMatchObject({ outcome: 'granted', provider: 'kms', secret: 'signing-key', version: '1' });
    expect(await scanForLeaks(redis.url, [value], { logs: lines.join('') })).toEqual([]);
    await prov.close();
  });

  it('refuses a ciphertext moved to another secret name (EncryptionContext binding)', async () => {
    const prov = provider('kmsctx');
    await prov.write('a', Buffer.from('value-of-secret-a'));
    await prov.write('b', Buffer.from('value-of-secret-b'));
    const a = await r.hget('kmsctx:kms-secret:{a}', 'v1');
    await r.hset('kmsctx:kms-secret:{b}', 'v1', a!);
    await expect(prov.readVersion('b')).rejects.toMatchObject({
      code: 'SECRET_INTEGRITY',
      message: expect.stringContaining('encryption context does not match'),
    });
    expect(Buffer.from((await prov.readVersion('a')).value).toString()).toBe('value-of-secret-a');
    await prov.close();
  });

  it('refuses a tampered ciphertext', async () => {
    const prov = provider('kmstamper');
    await prov.write('c', Buffer.from('value-of-secret-c'));
    const env = JSON.parse((await r.hget('kmstamper:kms-secret:{c}', 'v1'))!) as { ct: string };
    const ct = Buffer.from(env.ct, 'base64');
    ct[0] = ct[0]! ^ 0xff;
    await r.hset('kmstamper:kms-secret:{c}', 'v1', JSON.stringify({ ...env, ct: ct.toString('base64') }));
    await expect(prov.readVersion('c')).rejects.toMatchObject({ code: 'SECRET_INTEGRITY' });
    await prov.close();
  });

  it('kms-rewrap rotation re-encrypts under a fresh data key: same value, new version, new envelope', async () => {
    const { RotationService } = await import('../src/rotation/rotation-service.js');
    const { FleetEventBus } = await import('../src/events.js');
    const config = testConfig(redis.url, [fixtureType('signer', 'secret-reader.mjs', { secrets: ['enc-key'] })], {
      secrets: {
        provider: 'kms',
        kms: { keyId, endpoint: server!.url, region: 'us-east-1' },
        items: {
          'enc-key': { kind: 'encryption-key', rotation: { schedule: 'daily', rotator: { type: 'kms-rewrap' } } },
        },
      },
    });
    const prov = provider(config.redis.prefix);
    await prov.write('enc-key', Buffer.from('stable-encryption-key-material'));
    const before = JSON.parse((await r.hget(`${config.redis.prefix}:kms-secret:{enc-key}`, 'v1'))!) as {
      encryptedDataKey: string;
    };
    expect(await prov.keyRotationEnabled()).toBe(false);
    const svc = new RotationService({ config, redisUrl: redis.url, events: new FleetEventBus() });
    await svc.start();
    try {
      // The scheduler turned on automatic rotation of the customer key (secrets.kms.enableKeyRotation).
      expect(await prov.keyRotationEnabled()).toBe(true);
      const job = await svc.rotateNow('enc-key');
      await waitForBullJob(job, 'completed');
      const cur = await prov.readVersion('enc-key');
      expect(cur.version).toBe('2');
      expect(Buffer.from(cur.value).toString()).toBe('stable-encryption-key-material');
      const after = JSON.parse((await r.hget(`${config.redis.prefix}:kms-secret:{enc-key}`, 'v2'))!) as {
        encryptedDataKey: string;
      };
      expect(after.encryptedDataKey).not.toBe(before.encryptedDataKey);
      // On-demand rotation of the customer key: existing envelopes still decrypt.
      await prov.rotateKeyNow();
      expect(Buffer.from((await prov.readVersion('enc-key')).value).toString()).toBe('stable-encryption-key-material');
    } finally {
      await svc.stop();
      await prov.close();
    }
  });

  it('keeps previous versions readable and serves the newest as current', async () => {
    const prov = provider('kmsver');
    await prov.write('d', Buffer.from('version-one-value'));
    await prov.write('d', Buffer.from('version-two-value'));
    const cur = await prov.readVersion('d');
    expect([cur.version, Buffer.from(cur.value).toString()]).toEqual(['2', 'version-two-value']);
    expect(Buffer.from((await prov.readVersion('d', '1')).value).toString()).toBe('version-one-value');
    expect(await prov.list()).toEqual([expect.objectContaining({ name: 'd', version: '2' })]);
    await expect(prov.readVersion('nope')).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND' });
    await prov.close();
  });

  it('ensure-key creates the key an alias names once, then finds it; an unknown key id is an error', async () => {
    const alias = `alias/fleet-ensure-${Date.now()}`;
    const prov = new KmsProvider({
      keyId: alias,
      region: 'us-east-1',
      endpoint: server!.url,
      redis: r,
      keyPrefix: 'kmsensure',
      keepVersions: 3,
      requestTimeoutMs: 5000,
    });
    const first = await prov.ensureKey();
    expect(first.created).toBe(true);
    expect(await prov.ensureKey()).toEqual({ keyId: first.keyId, created: false });
    expect(await prov.write('e', Buffer.from('value-under-created-key'))).toEqual({ version: '1' });
    expect(Buffer.from((await prov.readVersion('e')).value).toString()).toBe('value-under-created-key');
    await prov.close();
    const missing = new KmsProvider({
      keyId: '00000000-0000-4000-8000-000000000000',
      region: 'us-east-1',
      endpoint: server!.url,
      redis: r,
      keyPrefix: 'kmsensure2',
      keepVersions: 3,
      requestTimeoutMs: 5000,
    });
    await expect(missing.ensureKey()).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND' });
    await missing.close();
  });

  it('fleet secrets set --provider kms stores a value from stdin (the CLI connects before it writes)', async () => {
    const { file } = writeJsonConfig(
      {
        redis: { prefix: uniquePrefix() },
        secrets: { kms: { keyId, endpoint: server!.url, region: 'us-east-1' } },
        jobTypes: [{ name: 'ok', processor: path.join(FIXTURES, 'ok.mjs') }],
      },
      'kms-cli',
    );
    const run = (args: string[], stdin = ''): ReturnType<typeof runFleet> => runFleet(args, file, redis.url, stdin);
    const set = await run(['secrets', 'set', 'cli-kms-key', '--provider', 'kms'], 'value-from-the-cli-0123');
    expect(set.out).toContain('cli-kms-key: stored version 1 in kms');
    expect(set.code).toBe(0);
    const list = await run(['secrets', 'list']);
    expect(list.out).toMatch(/cli-kms-key\s+kms\s+v1/);
  });
});
