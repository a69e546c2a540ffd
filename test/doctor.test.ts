import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { doctor } from '../src/cli/doctor/doctor.js';
import { transportChecks } from '../src/cli/doctor/transport-checks.js';
import { FIXTURES, fixtureType, startSupervisor, testConfig, writeJsonConfig } from './helpers/fleet.js';
import { uniquePrefix } from './helpers/redis.js';
import { waitForHeartbeat } from './helpers/wait.js';
import { describe, expect, it } from './helpers/fixture.js';

const run = promisify(execFile);

describe('fleet doctor', () => {
  it('flags what the zero-trust checklist forbids, each with its fix', async ({ redis }) => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-doctor-'));
    const config = testConfig(
      redis.url,
      [
        fixtureType('pay', 'ok.mjs', {
          sensitivity: 'critical',
          secrets: ['api-key', 'enc-key', 'orphan-key'],
          timeoutMs: 60_000,
        }),
      ],
      {
        dataDir,
        secrets: {
          items: {
            'api-key': { rotation: { schedule: 'weekly', rotator: { type: 'random' } } },
            'enc-key': { kind: 'encryption-key', rotation: { schedule: 'weekly', rotator: { type: 'random' } } },
          },
        },
      },
    );
    const checks = await doctor(config, redis.client, {
      production: true,
      metricsUrls: ['http://127.0.0.1:1/metrics'],
    });
    const byName = (prefix: string) => checks.filter((c) => c.check.startsWith(prefix));
    expect(byName('secret api-key: external provider')[0]).toMatchObject({
      status: 'FAIL',
      fix: expect.stringContaining('"vault", "kms", "exec" or "secrets-manager"'),
    });
    expect(byName('secret orphan-key: rotation policy')[0]).toMatchObject({ status: 'FAIL' });
    expect(byName('secret enc-key: rotation policy')[0]).toMatchObject({
      status: 'FAIL',
      detail: expect.stringContaining('longer than allowed for encryption-key'),
    });
    expect(byName('secret api-key: rotation policy')[0]).toMatchObject({ status: 'PASS' });
    expect(byName('job type pay: critical isolation')[0]).toMatchObject({ status: 'PASS' });
    expect(byName('job type pay: concurrency caps')[0]).toMatchObject({ status: 'WARN' });
    expect(byName('redis: eviction policy')[0]).toMatchObject({ status: 'PASS' });
    // The test Redis runs without persistence: refused in production mode.
    expect(byName('redis: persistence')[0]).toMatchObject({
      status: 'FAIL',
      fix: expect.stringContaining('--appendonly yes'),
    });
    expect(byName('monitoring: http://127.0.0.1:1/metrics')[0]).toMatchObject({ status: 'FAIL' });
    for (const c of checks) if (c.status !== 'PASS') expect(c.fix, c.check).toBeTruthy();
  });

  // Issue 27: a first-'@' regex judged these loopback while ioredis dials redis.example.net.
  it.each([
    ['redis://redis.example.net:6379#@127.0.0.1', 'the URL has a fragment (#…)'],
    ['redis://redis.example.net:6379/?x=@127.0.0.1', "the URL has an '@' after the host"],
    ['redis://redis.example.net:6379/@[::1]', "the URL has an '@' after the host"],
    ['redis://redis.example.net:6379', 'plain TCP to redis.example.net, not loopback'],
  ])('fails the Redis transport of %s, whatever the text after the host says', (url, detail) => {
    const config = testConfig('redis://127.0.0.1:1', [fixtureType('t', 'ok.mjs')]);
    const check = transportChecks(config, { production: true, redisUrl: url, env: {} }).find(
      (c) => c.check === 'redis: transport',
    );
    expect(check).toMatchObject({ status: 'FAIL', detail: expect.stringContaining(detail), fix: expect.any(String) });
    expect(JSON.stringify(check)).not.toContain('127.0.0.1');
  });

  it('fails when NODE_TLS_REJECT_UNAUTHORIZED=0, naming the fix; passes when it is unset', () => {
    const config = testConfig('redis://127.0.0.1:6379', [fixtureType('t', 'ok.mjs')]);
    const verification = (env: NodeJS.ProcessEnv) =>
      transportChecks(config, { production: false, env }).find((c) => c.check === 'tls: certificate verification');
    expect(verification({ NODE_TLS_REJECT_UNAUTHORIZED: '0' })).toEqual({
      status: 'FAIL',
      check: 'tls: certificate verification',
      detail:
        "NODE_TLS_REJECT_UNAUTHORIZED=0 turns off certificate verification for every TLS connection that does not turn it on itself (the fleet's own connections do)",
      fix: "unset NODE_TLS_REJECT_UNAUTHORIZED; trust a private CA with its file instead (REDIS_TLS_CA_FILE, VAULT_CACERT, createHttpClient's ca, NODE_EXTRA_CA_CERTS)",
    });
    expect(verification({})?.status).toBe('PASS');
    expect(verification({ NODE_TLS_REJECT_UNAUTHORIZED: '1' })?.status).toBe('PASS');
  });

  it('exits non-zero from the CLI when a check fails, zero when only warnings remain', async ({ redis }) => {
    const { file } = writeJsonConfig(
      { redis: { prefix: uniquePrefix() }, jobTypes: [{ name: 'ok', processor: path.join(FIXTURES, 'ok.mjs') }] },
      'doctor-cli',
    );
    const env = { ...process.env, REDIS_URL: redis.url, NODE_ENV: 'development' };
    const ok = await run(
      process.execPath,
      [path.join(FIXTURES, '..', '..', 'bin', 'fleet.js'), 'doctor', '--config', file],
      { env },
    );
    // Warnings: the local store (job secrets none; the audit MAC key), five Redis roles on the shared identity, no persistence, no metrics URL.
    expect(ok.stdout).toMatch(/\d+ checks: \d+ pass, 8 warn, 0 fail/);
    const failing = await run(
      process.execPath,
      [path.join(FIXTURES, '..', '..', 'bin', 'fleet.js'), 'doctor', '--production', '--json', '--config', file],
      { env },
    ).catch((e: { code: number; stdout: string }) => e);
    expect((failing as { code: number }).code).toBe(1);
    expect(JSON.parse((failing as { stdout: string }).stdout).failed).toBeGreaterThan(0);
  });

  it('fails a critical type whose supervisors run its sandboxes without the OS layer (production)', async ({
    redis,
  }) => {
    const types = [fixtureType('pay', 'ok.mjs', { sensitivity: 'critical', timeoutMs: 60_000 })];
    const off = testConfig(redis.url, types, { supervisor: { metricsPort: 0, heartbeatMs: 200, osLayer: 'off' } });
    const sup = await startSupervisor({ config: off });
    await waitForHeartbeat(redis.client, off.redis.prefix, sup.id);
    const checks = await doctor(off, redis.client, { production: true, metricsUrls: [] });
    expect(checks.find((c) => c.check === 'job type pay: sandbox OS layer')).toMatchObject({
      status: 'FAIL',
      detail: expect.stringContaining('process+permission-model'),
      fix: expect.stringContaining('bubblewrap'),
    });
    const dev = await doctor(off, redis.client, { production: false, metricsUrls: [] });
    expect(dev.find((c) => c.check === 'job type pay: sandbox OS layer')).toMatchObject({ status: 'WARN' });
    // A heartbeat record that is not one (written by something else) is named, never trusted.
    await redis.client.hset(
      `${off.redis.prefix}:supervisors`,
      'forged',
      JSON.stringify({ id: 'forged', types: [{ jobType: 'pay', layers: ['namespaces'] }] }),
    );
    const forged = await doctor(off, redis.client, { production: true, metricsUrls: [] });
    expect(forged.find((c) => c.check === 'supervisors: heartbeats')).toMatchObject({
      status: 'WARN',
      detail: expect.stringContaining('forged'),
    });
    expect(forged.find((c) => c.check === 'job type pay: sandbox OS layer')).toMatchObject({ status: 'FAIL' });
  });

  it('fails a critical type whose supervisors run its sandboxes without memory and process limits (production)', async ({
    redis,
  }) => {
    const types = [fixtureType('pay', 'ok.mjs', { sensitivity: 'critical', timeoutMs: 60_000 })];
    const off = testConfig(redis.url, types, {
      supervisor: { metricsPort: 0, heartbeatMs: 200, resourceLimits: 'off' },
    });
    const sup = await startSupervisor({ config: off });
    await waitForHeartbeat(redis.client, off.redis.prefix, sup.id);
    const checks = await doctor(off, redis.client, { production: true, metricsUrls: [] });
    expect(checks.find((c) => c.check === 'job type pay: memory and process limits')).toMatchObject({
      status: 'FAIL',
      detail: expect.stringContaining('runs without a cgroup (memoryLimitMb 384, maxProcesses 64 not enforced)'),
      fix: expect.stringContaining('supervisor.resourceLimits'),
    });
  });
});
