import { createHash, randomBytes, randomUUID } from 'node:crypto';
import path from 'node:path';
import {
  DescribeSecretCommand,
  GetSecretValueCommand,
  PutSecretValueCommand,
  SecretsManagerClient,
  UpdateSecretVersionStageCommand,
} from '@aws-sdk/client-secrets-manager';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FleetEventBus } from '../src/events.js';
import { freePort } from '../src/redis/embedded-redis.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import { RotationService } from '../src/rotation/rotation-service.js';
import { readAudit } from '../src/secrets/audit.js';
import { SecretsManagerProvider } from '../src/secrets/secrets-manager-provider.js';
import {
  FIXTURES,
  fixtureType,
  guardAgainstLeaks,
  makeProducer,
  runFleet,
  startSupervisor,
  testConfig,
  until,
  waitForJob,
  writeJsonConfig,
} from './helpers/fleet.js';
import { capturingLogger, scanForLeaks } from './helpers/leaks.js';
import { providerContract } from './helpers/provider-contract.js';
import { startTestRedis, uniquePrefix } from './helpers/redis.js';
import { startSecretsManager, useLocalAwsCredentials, type TestServer } from './helpers/servers.js';

useLocalAwsCredentials();
const sm = await startSecretsManager();
if ('reason' in sm) console.warn(`SKIPPING Secrets Manager tests: ${sm.reason}`);
else console.info(`Secrets Manager tests use ${sm.via} at ${sm.url} (a stand-in for AWS: no IAM, no KMS behind it)`);
const server = 'reason' in sm ? null : (sm as TestServer);

const sha = (s: string | Uint8Array): string => createHash('sha256').update(s).digest('hex');
let redis: Awaited<ReturnType<typeof startTestRedis>>;
let r: Redis;
/** The SDK itself: what "other consumers" and AWS's own rotation see and do. */
let aws: SecretsManagerClient;

beforeAll(async () => {
  redis = await startTestRedis();
  r = new Redis(redis.url);
  if (server) aws = new SecretsManagerClient({ region: 'us-east-1', endpoint: server.url });
}, 60_000);
afterAll(async () => {
  aws?.destroy();
  r?.disconnect();
  await redis?.release();
  await server?.release();
});
guardAgainstLeaks();

/** A name prefix of its own per use, so tests share no secret. */
const freshPrefix = (): string => `${uniquePrefix()}/`;

function provider(namePrefix: string, extra: Partial<ConstructorParameters<typeof SecretsManagerProvider>[0]> = {}) {
  return new SecretsManagerProvider({
    region: 'us-east-1',
    endpoint: server!.url,
    namePrefix,
    recoveryWindowDays: 0,
    requestTimeoutMs: 5000,
    ...extra,
  });
}

/** Version id → staging labels, as Secrets Manager holds them. */
async function stagesOf(secretId: string): Promise<Record<string, string[]>> {
  return (await aws.send(new DescribeSecretCommand({ SecretId: secretId }))).VersionIdsToStages ?? {};
}

/** The config of a fleet whose one type reads `names` from Secrets Manager under `namePrefix`. */
/**
 * The config of a fleet reading `names` from Secrets Manager under `namePrefix` (at `endpoint`):
 * type `reader` reports each value's length and hash, `leaky` tries every way out with it.
 */
function smConfig(namePrefix: string, names: string[], items: Record<string, unknown> = {}, endpoint = server!.url) {
  return testConfig(
    redis.url,
    [
      fixtureType('reader', 'secret-reader.mjs', { secrets: names }),
      fixtureType('leaky', 'secret-leaker.mjs', { secrets: names }),
    ],
    {
      secrets: {
        provider: 'secrets-manager',
        secretsManager: { endpoint, region: 'us-east-1', namePrefix, recoveryWindowDays: 0 },
        items,
      },
    },
  );
}

describe('secrets.secretsManager settings', () => {
  it('refuses a recovery window Secrets Manager does not take, naming the setting and the values it takes', () => {
    expect(() =>
      testConfig('redis://127.0.0.1:1', [fixtureType('t', 'ok.mjs')], {
        secrets: { provider: 'secrets-manager', secretsManager: { recoveryWindowDays: 3 } },
      }),
    ).toThrow(/secrets\.secretsManager\.recoveryWindowDays: use 0 \(delete at once, no recovery\) or 7 to 30 days/);
  });
});

describe.skipIf(!server)('provider contract: secrets-manager (moto)', () => {
  providerContract({
    open: () => Promise.resolve({ provider: provider(freshPrefix()) }),
    retiredVersionsStayReadable: true,
  });
});

describe.skipIf(!server)('Secrets Manager provider (moto)', () => {
  it('a job reads AWSCURRENT through a real supervisor: audited, counted by provider, masked, and no value in Redis, logs or results', async () => {
    const prefix = freshPrefix();
    const value = 'sm-live-value-0123456789abcdef';
    const prov = provider(prefix);
    const { version } = await prov.write('api-key', Buffer.from(value));
    // Stored as text: other consumers of the secret read it as a SecretString.
    const raw = await aws.send(new GetSecretValueCommand({ SecretId: `${prefix}api-key` }));
    expect([raw.SecretString, raw.VersionId, raw.VersionStages]).toEqual([value, version, ['AWSCURRENT']]);

    const config = smConfig(prefix, ['api-key']);
    const { logger, lines } = capturingLogger();
    const events = new FleetEventBus();
    const metrics = new FleetMetrics({ defaultMetrics: false });
    metrics.attach(events);
    await startSupervisor({ config, logger, events });
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('reader', { names: ['api-key'] })).id);
    expect(job.state).toBe('completed');
    expect(job.result).toEqual({ 'api-key': { length: value.length, sha256: sha(value) } });
    const audit = await readAudit(r, config.redis.prefix);
    expect(audit[0]).toMatchObject({
      outcome: 'granted',
      provider: 'secrets-manager',
      secret: 'api-key',
      version,
      jobId: job.id,
    });
    expect(await metrics.registry.metrics()).toMatch(
      /fleet_secret_fetch_seconds_count\{provider="secrets-manager"\} 1/,
    );
    expect(await scanForLeaks(redis.url, [value], { logs: lines.join(''), result: JSON.stringify(job) })).toEqual([]);
    await prov.close();
  });

  it('a fleet rotation moves the native labels: AWSCURRENT new, AWSPREVIOUS old, no AWSPENDING; after the grace window the old has none', async () => {
    const prefix = freshPrefix();
    const prov = provider(prefix);
    const first = await prov.write('api-key', Buffer.from('before-rotation-value-01'));
    const config = smConfig(prefix, ['api-key'], {
      'api-key': { rotation: { schedule: 'weekly', rotator: { type: 'random', bytes: 24 }, graceSeconds: 1 } },
    });
    const svc = new RotationService({ config, redisUrl: redis.url, events: new FleetEventBus() });
    await svc.start();
    try {
      const job = await svc.rotateNow('api-key');
      await until('rotation', async () => (await job.getState()) === 'completed');
      const stages = await stagesOf(`${prefix}api-key`);
      const current = Object.keys(stages).find((v) => stages[v]!.includes('AWSCURRENT'))!;
      expect(current).not.toBe(first.version);
      expect(stages).toEqual({ [first.version]: ['AWSPREVIOUS'], [current]: ['AWSCURRENT'] });
      const now = await prov.readCurrent('api-key');
      expect([now.version, Buffer.from(now.value).toString()]).toEqual([
        current,
        expect.stringMatching(/^[A-Za-z0-9_-]{32}$/),
      ]);
      // Inside the grace window the previous version is still served by version.
      expect(Buffer.from((await prov.readVersion('api-key', first.version)).value).toString()).toBe(
        'before-rotation-value-01',
      );
      // The scheduler's sweep retires it once the window is over.
      await expect
        .poll(async () => (await stagesOf(`${prefix}api-key`))[first.version], { timeout: 10_000, interval: 100 })
        .toEqual([]);
      expect(await stagesOf(`${prefix}api-key`)).toMatchObject({ [current]: ['AWSCURRENT'] });
      expect((await prov.list()).find((m) => m.name === 'api-key')?.version).toBe(current);
    } finally {
      await svc.stop();
      await prov.close();
    }
  });

  it("a value set by AWS's own rotation (PutSecretValue AWSPENDING, then the AWSCURRENT move) is what the next job reads", async () => {
    const prefix = freshPrefix();
    const prov = provider(prefix);
    const old = await prov.write('api-key', Buffer.from('value-before-aws-rotation'));
    const config = smConfig(prefix, ['api-key']);
    await startSupervisor({ config });
    const p = makeProducer(config);
    const before = await waitForJob(p, (await p.enqueue('reader', { names: ['api-key'] })).id);
    expect(before.result).toEqual({
      'api-key': { length: 'value-before-aws-rotation'.length, sha256: sha('value-before-aws-rotation') },
    });

    // What a rotation Lambda does: createSecret (AWSPENDING), setSecret/testSecret, finishSecret.
    const secretId = `${prefix}api-key`;
    const token = randomUUID();
    await aws.send(
      new PutSecretValueCommand({
        SecretId: secretId,
        ClientRequestToken: token,
        SecretString: 'value-from-aws-rotation',
        VersionStages: ['AWSPENDING'],
      }),
    );
    // Between createSecret and finishSecret, jobs still get the current value.
    const during = await waitForJob(p, (await p.enqueue('reader', { names: ['api-key'] })).id);
    expect(during.result).toEqual(before.result);
    await aws.send(
      new UpdateSecretVersionStageCommand({
        SecretId: secretId,
        VersionStage: 'AWSCURRENT',
        MoveToVersionId: token,
        RemoveFromVersionId: old.version,
      }),
    );
    await aws.send(
      new UpdateSecretVersionStageCommand({
        SecretId: secretId,
        VersionStage: 'AWSPENDING',
        RemoveFromVersionId: token,
      }),
    );

    const after = await waitForJob(p, (await p.enqueue('reader', { names: ['api-key'] })).id);
    expect(after.result).toEqual({
      'api-key': { length: 'value-from-aws-rotation'.length, sha256: sha('value-from-aws-rotation') },
    });
    const audit = await readAudit(r, config.redis.prefix);
    expect(audit.find((a) => a.jobId === after.id)).toMatchObject({ outcome: 'granted', version: token });
    // The same picture a fleet rotation leaves, so fleet's list and grace reads agree with AWS's.
    expect((await prov.list()).find((m) => m.name === 'api-key')?.version).toBe(token);
    expect(Buffer.from((await prov.readVersion('api-key', old.version)).value).toString()).toBe(
      'value-before-aws-rotation',
    );
    await prov.close();
  });

  it('the audit MAC key in Secrets Manager: created on first use, and its older versions still open after it changed twice', async () => {
    const { loadAuditKeys } = await import('../src/secrets/audit-chain.js');
    const prov = provider(freshPrefix());
    const first = await loadAuditKeys(prov, 'audit-mac-key', { create: true });
    const firstKey = Buffer.from(first.current.key);
    await prov.write('audit-mac-key', Buffer.from(randomBytes(32).toString('hex')));
    await prov.write('audit-mac-key', Buffer.from(randomBytes(32).toString('hex')));
    // The first version has no staging label left, yet records sealed under it must still verify.
    expect((await stagesOf(prov.secretId('audit-mac-key')))[first.current.version]).toEqual([]);
    const later = await loadAuditKeys(prov, 'audit-mac-key', { create: false });
    expect(later.current.version).not.toBe(first.current.version);
    expect(Buffer.from((await later.get(first.current.version))!).equals(firstKey)).toBe(true);
    later.discard();
    first.discard();
    await prov.close();
  });

  it('bytes that are not UTF-8 are stored as SecretBinary and come back exactly', async () => {
    const prov = provider(freshPrefix());
    const value = new Uint8Array([0xff, 0xfe, 0x00, 0x80, ...randomBytes(29)]);
    const { version } = await prov.write('binary-key', value);
    const raw = await aws.send(new GetSecretValueCommand({ SecretId: prov.secretId('binary-key') }));
    expect(raw.SecretString).toBeUndefined();
    expect(Buffer.from(raw.SecretBinary!).equals(Buffer.from(value))).toBe(true);
    const back = await prov.readCurrent('binary-key');
    expect(back.version).toBe(version);
    expect(Buffer.from(back.value).equals(Buffer.from(value))).toBe(true);
    await prov.close();
  });

  it('an endpoint nobody answers on is SECRET_PROVIDER_UNAVAILABLE (retryable), naming Secrets Manager and the setting to check', async () => {
    const dead = provider(freshPrefix(), { endpoint: `http://127.0.0.1:${await freePort()}`, requestTimeoutMs: 1000 });
    const lease = await dead.lease({ jobId: 'reader.1', jobType: 'reader', names: ['api-key'], ttlMs: 5000 });
    const expected = {
      code: 'SECRET_PROVIDER_UNAVAILABLE',
      retryable: true,
      message: expect.stringMatching(
        /^Secrets Manager is unreachable .*Fix: check secrets\.secretsManager\.endpoint\/region/,
      ),
    };
    await expect(lease.read('api-key')).rejects.toMatchObject({
      ...expected,
      message: expect.stringContaining('secret "api-key"'),
    });
    await expect(dead.check()).rejects.toMatchObject(expected);
    await lease.release();
    await dead.close();
  });

  it('fleet doctor: PASS when Secrets Manager answers; FAIL naming the settings to check when it does not', async () => {
    const { doctor } = await import('../src/cli/doctor/doctor.js');
    const credentials = async (endpoint: string) =>
      (
        await doctor(smConfig(freshPrefix(), ['api-key'], {}, endpoint), r, {
          production: true,
          metricsUrls: [],
        })
      ).find((c) => c.check === 'secrets-manager: credentials');
    expect(await credentials(server!.url)).toMatchObject({ status: 'PASS' });
    expect(await credentials(`http://127.0.0.1:${await freePort()}`)).toMatchObject({
      status: 'FAIL',
      detail: expect.stringContaining('Secrets Manager is unreachable'),
      fix: expect.stringContaining('secrets.secretsManager.region/endpoint and AWS credentials'),
    });
  });

  it('a missing secret is SECRET_NOT_FOUND naming the secret, its Secrets Manager name and the command that sets it', async () => {
    const prefix = freshPrefix();
    const prov = provider(prefix);
    await expect(prov.readCurrent('nope')).rejects.toMatchObject({
      code: 'SECRET_NOT_FOUND',
      retryable: false,
      message: expect.stringContaining(
        `secret "nope" (Secrets Manager "${prefix}nope") does not exist. Fix: fleet secrets set nope --provider secrets-manager`,
      ),
    });
    // Rotation cannot start a secret: Secrets Manager would make its first version current at once.
    await expect(prov.writePending('nope', Buffer.from('pending-of-nothing'))).rejects.toMatchObject({
      code: 'SECRET_NOT_FOUND',
    });
    await prov.close();
  });

  it('a removed secret in its recovery window reads as SECRET_NOT_FOUND with the way to restore it', async () => {
    const prefix = freshPrefix();
    const prov = provider(prefix, { recoveryWindowDays: 7 });
    await prov.write('soon-gone', Buffer.from('value-to-be-deleted-01'));
    await prov.remove('soon-gone');
    await expect(prov.readCurrent('soon-gone')).rejects.toMatchObject({
      code: 'SECRET_NOT_FOUND',
      message: expect.stringContaining(`aws secretsmanager restore-secret --secret-id ${prefix}soon-gone`),
    });
    expect((await prov.list()).map((m) => m.name)).not.toContain('soon-gone');
    await prov.close();
  });

  it('fleet secrets set --provider secrets-manager stores a value from stdin, and fleet status --secrets lists it', async () => {
    const prefix = freshPrefix();
    const { file } = writeJsonConfig(
      {
        redis: { prefix: uniquePrefix() },
        secrets: {
          provider: 'secrets-manager',
          secretsManager: { endpoint: server!.url, region: 'us-east-1', namePrefix: prefix },
        },
        jobTypes: [{ name: 'reader', processor: path.join(FIXTURES, 'secret-reader.mjs'), secrets: ['cli-sm-key'] }],
      },
      'sm-cli',
    );
    const run = (args: string[], stdin = ''): ReturnType<typeof runFleet> => runFleet(args, file, redis.url, stdin);
    const set = await run(
      ['secrets', 'set', 'cli-sm-key', '--provider', 'secrets-manager'],
      'value-from-the-cli-sm-01',
    );
    expect(set.code, set.out).toBe(0);
    const version = /cli-sm-key: stored version (\S+) in secrets-manager/.exec(set.out)?.[1];
    expect(version).toMatch(/^[0-9a-f-]{36}$/);
    const status = await run(['status', '--secrets']);
    expect(status.code, status.out).toBe(0);
    expect(status.out).toMatch(new RegExp(`cli-sm-key\\s+secrets-manager v${version}`));
    expect(status.out).not.toContain('value-from-the-cli-sm-01');
  });
});
