import path from 'node:path';
import { loadConfig } from '../src/config/load.js';
import { sha256Hex } from '../src/api/auth.js';
import { listen } from '../src/api/api-server.js';
import { createApiApp } from '../src/api/http-api.js';
import { Producer } from '../src/producers/producer.js';
import { FIXTURES, makeProducer, runFleet, startSupervisor, waitForJob, writeJsonConfig } from './helpers/fleet.js';
import { uniquePrefix } from './helpers/redis.js';
import { waitForAudit } from './helpers/wait.js';
import { describe, expect, it, type TestRedis } from './helpers/fixture.js';

function fleet(
  redis: TestRedis,
  args: string[],
  file: string,
  stdin?: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runFleet(args, file, redis.url, stdin);
}

const ADMIN = 'admin-token-0123456789abcdef';
const PLAIN = 'plain-token-0123456789abcdef';

describe('secrets and audit from the CLI and the API', () => {
  it('set (value from stdin), list, use in a job, then audit and status --secrets show it', async ({ redis }) => {
    const { file } = writeJsonConfig(
      {
        redis: { prefix: uniquePrefix() },
        producers: [
          { name: 'ops', tokenSha256: sha256Hex(ADMIN), jobTypes: ['*'], admin: true },
          { name: 'svc', tokenSha256: sha256Hex(PLAIN), jobTypes: ['*'] },
        ],
        jobTypes: [
          { name: 'reader', processor: path.join(FIXTURES, 'secret-reader.mjs'), secrets: ['api-key'], attempts: 1 },
        ],
      },
      'cli-sec',
    );
    const set = await fleet(redis, ['secrets', 'set', 'api-key'], file, 'sk-from-stdin-123456\n');
    expect(set.stderr).toBe('');
    expect(set.stdout.trim()).toBe('api-key: stored version 1 in local');
    const list = await fleet(redis, ['secrets', 'list', '--json'], file);
    expect(JSON.parse(list.stdout)).toEqual([
      expect.objectContaining({ name: 'api-key', version: '1', provider: 'local' }),
    ]);
    expect(list.stdout).not.toContain('sk-from-stdin');

    const config = await loadConfig({ path: file });
    const cfg = { ...config, redis: { ...config.redis, url: redis.url } };
    await startSupervisor({ config: cfg });
    const p = makeProducer(cfg);
    const job = await waitForJob(p, (await p.enqueue('reader', { names: ['api-key'] })).id);
    expect(job.result).toMatchObject({ 'api-key': { length: 20 } });
    await waitForAudit(redis.client, cfg.redis.prefix, { secret: 'api-key' }, 1);

    const audit = await fleet(redis, ['audit', '--since', '1h', '--secret', 'api-key', '--json'], file);
    expect(JSON.parse(audit.stdout)).toEqual([
      expect.objectContaining({ outcome: 'granted', secret: 'api-key', jobId: job.id, version: '1' }),
    ]);
    expect(JSON.parse((await fleet(redis, ['audit', '--denied', '--json'], file)).stdout)).toEqual([]);
    const status = JSON.parse((await fleet(redis, ['status', '--secrets', '--json'], file)).stdout) as {
      secrets: unknown[];
    };
    expect(status.secrets).toEqual([
      expect.objectContaining({
        secret: 'api-key',
        provider: 'local',
        version: '1',
        granted: 1,
        denied: 0,
        usedBy: ['reader'],
      }),
    ]);
    expect((await fleet(redis, ['audit', '--since', 'yesterday'], file)).stderr).toContain('not a duration');

    const producer = new Producer({ config: cfg });
    const server = await listen(createApiApp({ producer }), '127.0.0.1', 0);
    const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const ok = await fetch(`${base}/v1/audit?since=1h&secret=api-key`, {
        headers: { authorization: `Bearer ${ADMIN}` },
      });
      expect(ok.status).toBe(200);
      expect(((await ok.json()) as { records: unknown[] }).records).toHaveLength(1);
      const denied = await fetch(`${base}/v1/audit`, { headers: { authorization: `Bearer ${PLAIN}` } });
      expect(denied.status).toBe(403);
      const bad = await fetch(`${base}/v1/audit?since=soon`, { headers: { authorization: `Bearer ${ADMIN}` } });
      expect(bad.status).toBe(400);
    } finally {
      server.close();
      server.closeAllConnections();
      await producer.close();
    }

    expect((await fleet(redis, ['secrets', 'delete', 'api-key'], file)).code).toBe(0);
    // Left: only the audit trail's MAC key, which the supervisor created in the local store.
    expect(
      (JSON.parse((await fleet(redis, ['secrets', 'list', '--json'], file)).stdout) as { name: string }[]).map(
        (s) => s.name,
      ),
    ).toEqual(['audit-mac-key']);
    const empty = await fleet(redis, ['secrets', 'set', 'x'], file, '');
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('no value on stdin');
  });
});
