import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFleet } from '../src/app.js';
import { sha256Hex } from '../src/api/auth.js';
import { doctor } from '../src/cli/doctor/doctor.js';
import { transportChecks } from '../src/cli/doctor/transport-checks.js';
import { resolveConfig } from '../src/config/resolve.js';
import { loadTlsFiles, VAULT_TLS } from '../src/config/tls.js';
import { silentLogger } from '../src/observability/logger.js';
import { createHttpClient } from '../src/producers/http-client.js';
import { connectRedis, ensureReady, type RedisClient } from '../src/redis/connection.js';
import { startEmbeddedRedis, type EmbeddedRedis } from '../src/redis/embedded-redis.js';
import { makeProvider } from '../src/secrets/providers.js';
import { setupVault } from '../src/secrets/vault-setup.js';
import {
  FIXTURES,
  fixtureType,
  guardAgainstLeaks,
  makeProducer,
  startSupervisor,
  testConfig,
  until,
  waitForJob,
  writeJsonConfig,
} from './helpers/fleet.js';
import { capturingLogger, scanForLeaks } from './helpers/leaks.js';
import { uniquePrefix } from './helpers/redis.js';
import { HAS_REDIS_CLI, startRedisCluster, type TestCluster } from './helpers/redis-cluster.js';
import { setupDevVault, startVault, type VaultServer } from './helpers/servers.js';
import { makeTestPki } from './helpers/tls.js';

const run = promisify(execFile);
const pki = await makeTestPki();
const vaultOrReason = await startVault({ tls: { ...pki.server, caFile: pki.caFile } });
if ('reason' in vaultOrReason) console.warn(`SKIPPING Vault-over-TLS tests: ${vaultOrReason.reason}`);
const vault = 'reason' in vaultOrReason ? null : (vaultOrReason as VaultServer);
if (!HAS_REDIS_CLI)
  console.warn('SKIPPING the Redis Cluster over TLS test: redis-cli not found (apt-get install redis-server).');

const SECRET = 'sk-tls-0123456789abcdef-value';
const TOKEN = 'tls-producer-token-0123456789';
const sha = (s: string): string => sha256Hex(s);

/** A redis-server speaking only TLS: `mtls` demands a client certificate, `tls` does not. */
const servers: { mtls?: EmbeddedRedis; tls?: EmbeddedRedis } = {};
const dirs: string[] = [];
async function tlsRedis(authClients: boolean): Promise<EmbeddedRedis> {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-tls-redis-'));
  dirs.push(dir);
  return startEmbeddedRedis({
    dataDir: dir,
    persistent: false,
    tls: { ...pki.server, caFile: pki.caFile, authClients },
  });
}
const mtlsUrl = (): string => servers.mtls!.url;
const tlsUrl = (): string => servers.tls!.url;
const clientFiles = { caFile: pki.caFile, ...pki.client };

beforeAll(async () => {
  servers.mtls = await tlsRedis(true);
  servers.tls = await tlsRedis(false);
  if (vault) {
    const setup = await setupDevVault(
      vault,
      [['reader', ['tls-key']]],
      [],
      new Map(),
      loadTlsFiles({ caFile: pki.caFile }, VAULT_TLS),
    );
    process.env.FLEET_TLS_VAULT_ROLE_ID = setup.roleId;
    process.env.FLEET_TLS_VAULT_SECRET_ID = setup.secretId;
    process.env.FLEET_TLS_VAULT_ROTATOR_ROLE_ID = setup.rotator.roleId;
    process.env.FLEET_TLS_VAULT_ROTATOR_SECRET_ID = setup.rotator.secretId;
    process.env.FLEET_TLS_VAULT_ROOT = vault.rootToken;
    const root = await makeProvider('vault', vaultConfig('token'), { logger: silentLogger });
    await root.write('tls-key', Buffer.from(SECRET));
    await root.close();
  }
}, 60_000);
afterAll(async () => {
  for (const v of ['ROLE_ID', 'SECRET_ID', 'ROTATOR_ROLE_ID', 'ROTATOR_SECRET_ID', 'ROOT'])
    delete process.env[`FLEET_TLS_VAULT_${v}`];
  await servers.mtls?.release();
  await servers.tls?.release();
  await vault?.release();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  pki.release();
}, 30_000);
guardAgainstLeaks();

/** A config over the mTLS Redis, with the given Redis TLS settings (and anything else). */
function redisTlsConfig(tls: Record<string, string>, extra: Record<string, unknown> = {}, url = mtlsUrl()) {
  return testConfig(url, [fixtureType('echo', 'ok.mjs')], { redis: { url, prefix: uniquePrefix(), tls }, ...extra });
}

/** A config whose secrets come from the HTTPS Vault, with the AppRole `fleet vault setup` made (or the root token). */
function vaultConfig(
  auth: 'approle' | 'token',
  tls: Record<string, string> = { caFile: pki.caFile },
  address = vault!.url,
) {
  return testConfig(mtlsUrl(), [fixtureType('reader', 'secret-reader.mjs', { secrets: ['tls-key'] })], {
    redis: { url: mtlsUrl(), prefix: uniquePrefix(), tls: clientFiles },
    secrets: {
      provider: 'vault',
      vault: {
        address,
        auth,
        tls,
        tokenEnv: 'FLEET_TLS_VAULT_ROOT',
        roleIdEnv: 'FLEET_TLS_VAULT_ROLE_ID',
        secretIdEnv: 'FLEET_TLS_VAULT_SECRET_ID',
        rotatorRoleIdEnv: 'FLEET_TLS_VAULT_ROTATOR_ROLE_ID',
        rotatorSecretIdEnv: 'FLEET_TLS_VAULT_ROTATOR_SECRET_ID',
      },
    },
  });
}

async function refusal(redis: RedisClient): Promise<unknown> {
  redis.on('error', () => undefined);
  try {
    return await ensureReady(redis).then(
      () => new Error('connected'),
      (err: unknown) => err,
    );
  } finally {
    redis.disconnect();
  }
}

describe('Redis over TLS (a real redis-server with a TLS port only)', () => {
  it('a supervisor takes and finishes a job over rediss://, presenting the client certificate the server demands', async () => {
    const config = redisTlsConfig(clientFiles);
    await startSupervisor({ config, logger: silentLogger });
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('echo', { over: 'tls' })).id);
    expect(job).toMatchObject({ state: 'completed', result: { got: { over: 'tls' } } });
  });

  it('takes its TLS files from REDIS_TLS_* when the config names none (paths made absolute)', async () => {
    const env = {
      REDIS_TLS_CA_FILE: path.relative(process.cwd(), pki.caFile),
      REDIS_TLS_CERT_FILE: pki.client.certFile,
      REDIS_TLS_KEY_FILE: pki.client.keyFile,
      REDIS_TLS_SERVERNAME: 'localhost',
    };
    Object.assign(process.env, env);
    try {
      const config = testConfig(mtlsUrl(), [fixtureType('echo', 'ok.mjs')]);
      expect(config.redis.tls).toEqual({ ...clientFiles, servername: 'localhost' });
      const r = connectRedis(mtlsUrl(), 'producer', { tls: config.redis.tls });
      await ensureReady(r);
      expect(await r.ping()).toBe('PONG');
      r.disconnect();
    } finally {
      for (const k of Object.keys(env)) delete process.env[k];
    }
  });

  it('without the client certificate the server demands, start-up fails with TLS_REFUSED naming the settings to set', async () => {
    const config = redisTlsConfig({ caFile: pki.caFile });
    const err = await startFleet({ config, role: 'worker', logger: silentLogger }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'TLS_REFUSED',
      message: expect.stringMatching(
        /^Redis at 127\.0\.0\.1:\d+ refused TLS: .*\(ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED\)\. Fix: Redis requires a client certificate: set redis\.tls\.certFile \(REDIS_TLS_CERT_FILE\) and redis\.tls\.keyFile \(REDIS_TLS_KEY_FILE\)\.$/,
      ),
    });
  });

  it('a server certificate from another CA is refused with TLS_REFUSED naming the CA setting, and the URL password stays out of the message', async () => {
    const port = new URL(tlsUrl()).port;
    const url = `rediss://fleet-api:hunter2-url-password@127.0.0.1:${port}`;
    const config = redisTlsConfig({ caFile: pki.otherCaFile }, {}, url);
    for (const attempt of [
      () => startFleet({ config, role: 'worker', logger: silentLogger }).then(() => new Error('started')),
      () => refusal(connectRedis(url, 'producer', { tls: config.redis.tls })),
      // No CA file at all: Node's bundled roots do not know a private CA either.
      () => refusal(connectRedis(url, 'producer')),
    ]) {
      const err = await attempt().catch((e: unknown) => e);
      expect(err).toMatchObject({
        code: 'TLS_REFUSED',
        message: expect.stringMatching(
          /^Redis at 127\.0\.0\.1:\d+ refused TLS: .*\((SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)\)\. Fix: set redis\.tls\.caFile \(REDIS_TLS_CA_FILE\) to the PEM file of the CA that signed Redis's certificate\.$/,
        ),
      });
      expect(String((err as Error).message)).not.toContain('hunter2');
    }
  });

  it('checks the name: a certificate that does not carry the expected server name is refused', async () => {
    const err = await refusal(
      connectRedis(tlsUrl(), 'producer', { tls: { caFile: pki.caFile, servername: 'redis.example.com' } }),
    );
    expect(err).toMatchObject({
      code: 'TLS_REFUSED',
      message: expect.stringContaining('(ERR_TLS_CERT_ALTNAME_INVALID). Fix: connect by a name Redis'),
    });
    // By a name the certificate does carry, the same server is fine.
    const r = connectRedis(tlsUrl().replace('127.0.0.1', 'localhost'), 'producer', { tls: { caFile: pki.caFile } });
    await ensureReady(r);
    expect(await r.ping()).toBe('PONG');
    r.disconnect();
  });

  it('refuses bad TLS settings before connecting, naming the setting and the fix', () => {
    const refused = (tls: Record<string, string>, url = mtlsUrl()): string => {
      try {
        redisTlsConfig(tls, {}, url);
      } catch (err) {
        return (err as Error).message;
      }
      return 'accepted';
    };
    expect(refused({ caFile: pki.caFile, certFile: pki.client.certFile })).toContain(
      'redis.tls.certFile (REDIS_TLS_CERT_FILE) is set but redis.tls.keyFile (REDIS_TLS_KEY_FILE) is not. Fix: give the certificate and its private key together.',
    );
    expect(refused({ caFile: path.join(pki.dir, 'missing.pem') })).toContain(
      `redis.tls.caFile (REDIS_TLS_CA_FILE): ${path.join(pki.dir, 'missing.pem')} does not exist.`,
    );
    // TLS files beside a plain URL: the operator would believe the traffic encrypted.
    expect(refused({ caFile: pki.caFile }, mtlsUrl().replace('rediss:', 'redis:'))).toContain(
      'is set but the Redis URL is not rediss:// or rediss-cluster://: the connection would be plain TCP. Fix: use the rediss:// form',
    );
    // Files that exist but hold the wrong thing are named when the connection is made.
    expect(() => connectRedis(mtlsUrl(), 'producer', { tls: { caFile: pki.client.keyFile } })).toThrow(
      /redis\.tls\.caFile \(REDIS_TLS_CA_FILE\): .*client\.key holds no PEM certificate .*Fix: give the PEM file of the CA that signed Redis's certificate\./,
    );
    expect(() =>
      connectRedis(mtlsUrl(), 'producer', { tls: { certFile: pki.client.certFile, keyFile: pki.server.keyFile } }),
    ).toThrow(/redis\.tls\.certFile .* and redis\.tls\.keyFile .* do not load as a certificate and its key/);
    expect(() => connectRedis('redis://127.0.0.1:1', 'producer', { tls: { caFile: pki.caFile } })).toThrow(
      /given for a plain redis:\/\/ URL.*Fix: use the rediss:\/\/ form of the URL/,
    );
  });

  describe.skipIf(!HAS_REDIS_CLI)('Redis Cluster over TLS', () => {
    let cluster: TestCluster | undefined;
    afterAll(() => cluster?.release());

    it('3 masters with TLS on client and bus ports: a supervisor runs jobs of types spread over the shards over rediss-cluster://', async () => {
      cluster = await startRedisCluster({ tls: { ...pki.server, caFile: pki.caFile, client: pki.client } });
      const url = cluster.url;
      expect(url).toMatch(/^rediss-cluster:\/\//);
      const types = ['alpha', 'bravo', 'charlie'];
      const config = testConfig(
        url,
        types.map((t) => fixtureType(t, 'ok.mjs')),
        { redis: { url, prefix: uniquePrefix(), tls: clientFiles } },
      );
      await startSupervisor({ config, logger: silentLogger });
      const p = makeProducer(config);
      for (const t of types) expect((await waitForJob(p, (await p.enqueue(t, { t })).id)).state).toBe('completed');
      // The same cluster without the client certificate: refused, with the reason (which a Cluster
      // client alone does not report).
      const bare = connectRedis(url, 'producer', { tls: { caFile: pki.caFile } });
      expect(await refusal(bare)).toMatchObject({
        code: 'TLS_REFUSED',
        message: expect.stringContaining('Fix: Redis requires a client certificate'),
      });
    }, 60_000);
  });
});

describe.skipIf(!vault)('Vault over TLS (OpenBao with HTTPS listeners)', () => {
  it('the Vault provider logs in and reads a job secret over https with the CA file', async () => {
    const prov = await makeProvider('vault', vaultConfig('approle'), { logger: silentLogger });
    await prov.check();
    const lease = await prov.lease({ jobId: 'reader.tls', jobType: 'reader', names: ['tls-key'], ttlMs: 5000 });
    expect(Buffer.from((await lease.read('tls-key')).value).toString()).toBe(SECRET);
    await lease.release();
    await prov.close();
  });

  it('without the CA file Vault is refused with TLS_REFUSED naming VAULT_CACERT, and VAULT_SKIP_VERIFY does not turn verification off', async () => {
    process.env.VAULT_SKIP_VERIFY = 'true';
    try {
      const prov = await makeProvider('vault', vaultConfig('approle', {}), { logger: silentLogger });
      const expected = {
        code: 'TLS_REFUSED',
        message: expect.stringMatching(
          /^Vault refused TLS \(AppRole login\): .*\. Fix: set secrets\.vault\.tls\.caFile \(VAULT_CACERT\) to the PEM file of the CA that signed Vault's certificate\.$/,
        ),
      };
      await expect(prov.check()).rejects.toMatchObject(expected);
      await prov.close();
      // `fleet vault setup` (node-vault, which reads VAULT_SKIP_VERIFY itself) is refused too.
      await expect(
        setupVault({
          address: vault!.url,
          adminToken: vault!.rootToken,
          mount: 'secret',
          prefix: 'fleet',
          tokenRole: 'fleet-job',
          policyPrefix: 'fleet-job-',
          approleMount: 'approle',
          scopes: new Map(),
        }),
      ).rejects.toMatchObject({
        code: 'TLS_REFUSED',
        message: expect.stringContaining('secrets.vault.tls.caFile (VAULT_CACERT)'),
      });
    } finally {
      delete process.env.VAULT_SKIP_VERIFY;
    }
  });

  it('a Vault listener that demands a client certificate: accepted with VAULT_CLIENT_CERT/KEY files, refused without', async () => {
    const withCert = await makeProvider('vault', vaultConfig('token', clientFiles, vault!.clientCertUrl), {
      logger: silentLogger,
    });
    await withCert.check();
    await withCert.close();
    const without = await makeProvider('vault', vaultConfig('token', { caFile: pki.caFile }, vault!.clientCertUrl), {
      logger: silentLogger,
    });
    await expect(without.check()).rejects.toMatchObject({
      code: 'TLS_REFUSED',
      message: expect.stringMatching(/Fix: Vault (requires|does not accept) a client certificate/),
    });
    await without.close();
  });

  it('the whole fleet over TLS: the typed client with the CA enqueues over HTTPS, the job reads its Vault secret, and the result comes back; without the CA the client is refused', async () => {
    const { logger, lines } = capturingLogger();
    const base = vaultConfig('approle');
    const config = resolveConfig(
      {
        redis: { url: mtlsUrl(), prefix: uniquePrefix(), tls: clientFiles },
        dataDir: base.dataDir,
        api: { port: 0, tls: pki.server },
        supervisor: { metricsPort: 0, heartbeatMs: 500, shutdownDeadlineMs: 2000 },
        producers: [{ name: 'tls-client', tokenSha256: sha(TOKEN), jobTypes: ['*'] }],
        secrets: { provider: 'vault', vault: { ...base.secrets.vault, tls: { caFile: pki.caFile } } },
        jobTypes: [fixtureType('reader', 'secret-reader.mjs', { secrets: ['tls-key'] })],
      },
      { baseDir: FIXTURES },
    );
    const fleet = await startFleet({ config, role: 'all', logger });
    try {
      expect(fleet.apiUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const client = createHttpClient({ baseUrl: fleet.apiUrl!, token: TOKEN, ca: readFileSync(pki.caFile) });
      const { id } = await client.enqueue('reader', { names: ['tls-key'] });
      await until('the job completes', async () => (await client.getJob(id)).state === 'completed', 20_000);
      expect((await client.getJob(id)).result).toEqual({ 'tls-key': { length: SECRET.length, sha256: sha(SECRET) } });
      const noCa = createHttpClient({ baseUrl: fleet.apiUrl!, token: TOKEN });
      await expect(noCa.enqueue('reader', { names: ['tls-key'] })).rejects.toMatchObject({
        status: 0,
        code: 'TLS_REFUSED',
        message: expect.stringContaining("Fix: pass `ca` (the PEM of the CA that signed the API's certificate)"),
      });
      // The value is nowhere but in the job's own sandbox: not in Redis, the logs, the job's record or the metrics.
      const texts = {
        logs: lines.join(''),
        job: JSON.stringify(await client.getJob(id)),
        metrics: (await fleet.metrics.render()).body,
      };
      expect(await scanForLeaks(mtlsUrl(), [SECRET], texts, '*', clientFiles)).toEqual([]);
    } finally {
      await fleet.release();
    }
  }, 60_000);
});

describe('fleet doctor: traffic in clear', () => {
  it('fails a production config whose Redis or Vault traffic is plain TCP to a non-loopback address, naming the fix; passes TLS and loopback', async () => {
    const plain = testConfig('redis://10.0.0.5:6379', [fixtureType('echo', 'ok.mjs')], {
      secrets: { vault: { address: 'http://10.0.0.6:8200' } },
    });
    const db = connectRedis(tlsUrl(), 'producer', { tls: { caFile: pki.caFile } });
    try {
      await ensureReady(db);
      const checks = await doctor(plain, db, { production: true, metricsUrls: [] });
      expect(checks.find((c) => c.check === 'redis: transport')).toEqual({
        status: 'FAIL',
        check: 'redis: transport',
        detail: 'plain TCP to 10.0.0.5, not loopback: credentials, secrets and job data cross the network in clear',
        fix: 'use rediss:// (rediss-cluster:// for a cluster) with redis.tls.caFile / REDIS_TLS_CA_FILE, Redis serving tls-port (docs/operations.md#tls)',
      });
      expect(checks.find((c) => c.check === 'vault: transport')).toMatchObject({
        status: 'FAIL',
        fix: expect.stringContaining('https:// address of Vault with secrets.vault.tls.caFile / VAULT_CACERT'),
      });
    } finally {
      db.disconnect();
    }
    // Outside production the same is a warning.
    expect(transportChecks(plain, { production: false }).find((c) => c.check === 'redis: transport')?.status).toBe(
      'WARN',
    );
    // A cluster with one seed off loopback fails; the admin URL of a redis-acl rotation is checked too.
    const rotated = testConfig('redis-cluster://127.0.0.1:7000,10.0.0.7:7001', [fixtureType('echo', 'ok.mjs')], {
      secrets: {
        items: {
          'redis-api': {
            rotation: { schedule: 'daily', rotator: { type: 'redis-acl', role: 'api', adminUrlEnv: 'TLS_TEST_ADMIN' } },
          },
        },
      },
    });
    const checks = transportChecks(rotated, {
      production: true,
      env: { TLS_TEST_ADMIN: 'redis://admin:pw@10.0.0.8:6379' },
    });
    expect(checks.filter((c) => c.status === 'FAIL').map((c) => [c.check, c.detail.split(',')[0]])).toEqual([
      ['redis: transport', 'plain TCP to 10.0.0.7'],
      ['redis: transport (TLS_TEST_ADMIN)', 'plain TCP to 10.0.0.8'],
    ]);
    expect(JSON.stringify(checks)).not.toContain(':pw@');
    // TLS anywhere, or plain on loopback only, passes.
    const tls = redisTlsConfig(
      { caFile: pki.caFile },
      { secrets: { vault: { address: 'https://vault.internal:8200' } } },
    );
    const loopback = testConfig('redis://127.0.0.1:6379', [fixtureType('echo', 'ok.mjs')], {
      secrets: { vault: { address: 'http://[::1]:8200' } },
    });
    for (const c of [tls, loopback])
      expect(transportChecks(c, { production: true }).filter((x) => x.status !== 'PASS')).toEqual([]);
    expect(transportChecks(tls, { production: true })[0]?.detail).toBe(`TLS to 127.0.0.1 (CA ${pki.caFile})`);
    // An API on a public interface without api.tls: a warning (a TLS proxy may sit in front).
    const api = transportChecks(
      testConfig('redis://127.0.0.1:6379', [fixtureType('echo', 'ok.mjs')], { api: { host: '0.0.0.0' } }),
      {
        production: true,
      },
    ).find((c) => c.check === 'api: transport');
    expect(api).toMatchObject({ status: 'WARN', fix: expect.stringContaining('set api.tls (FLEET_API_TLS_CERT_FILE') });
  });

  it('the CLI reaches a rediss:// Redis with REDIS_TLS_CA_FILE: fleet doctor passes the transport and exits 0 outside production', async () => {
    const { file } = writeJsonConfig(
      { redis: { prefix: uniquePrefix() }, jobTypes: [{ name: 'ok', processor: path.join(FIXTURES, 'ok.mjs') }] },
      'tls-doctor',
    );
    const env = { ...process.env, REDIS_URL: tlsUrl(), REDIS_TLS_CA_FILE: pki.caFile, NODE_ENV: 'development' };
    const out = await run(
      process.execPath,
      [path.join(FIXTURES, '..', '..', 'bin', 'fleet.js'), 'doctor', '--json', '--config', file],
      {
        env,
      },
    );
    const checks = (JSON.parse(out.stdout) as { checks: { check: string; status: string; detail: string }[] }).checks;
    expect(checks.find((c) => c.check === 'redis: transport')).toMatchObject({
      status: 'PASS',
      detail: `TLS to 127.0.0.1 (CA ${pki.caFile})`,
    });
    expect(checks.find((c) => c.check === 'redis: eviction policy')).toMatchObject({ status: 'PASS' });
  });
});

describe('NODE_TLS_REJECT_UNAUTHORIZED=0', () => {
  it('does not turn off verification for the HTTP client or the KMS and Secrets Manager clients: nothing reaches an untrusted server, while a plain fetch in the same process does', async () => {
    // The server certificate of the test CA, which the child process does not trust: a MITM's.
    const seen: string[] = [];
    const mitm = https.createServer(
      { cert: readFileSync(pki.server.certFile), key: readFileSync(pki.server.keyFile) },
      (req, res) => {
        seen.push(`${req.method} ${req.url} ${req.headers.authorization ?? ''}`);
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ id: 'x.1', type: 'x', Plaintext: 'AAAA', SecretString: 'stolen' }));
      },
    );
    await new Promise<void>((r) => mitm.listen(0, '127.0.0.1', r));
    try {
      const { NODE_EXTRA_CA_CERTS: _ca, ...env } = process.env;
      const probe = await run(
        process.execPath,
        [
          '--import',
          'tsx',
          path.join(FIXTURES, 'tls-verify-probe.ts'),
          `https://127.0.0.1:${(mitm.address() as AddressInfo).port}`,
        ],
        { env: { ...env, NODE_TLS_REJECT_UNAUTHORIZED: '0' }, timeout: 60_000 },
      );
      const out = JSON.parse(probe.stdout) as Record<string, string>;
      // The control: the variable is in effect in the child (a fetch without an agent trusts anyone).
      expect(out).toMatchObject({ env: '0', fetch: 'answered' });
      expect(out.httpClient).toMatch(/^TLS_REFUSED the fleet API at https:\/\/127\.0\.0\.1:\d+ refused TLS: /);
      expect(out.kms).toMatch(/unable to verify the first certificate/);
      expect(out.secretsManager).toMatch(/unable to verify the first certificate/);
      expect(seen).toEqual(['GET /control ']);
    } finally {
      mitm.closeAllConnections();
      await new Promise<void>((r) => mitm.close(() => r()));
    }
  });
});
