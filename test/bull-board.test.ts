import type { Server } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { sha256Hex } from '../src/producers/auth.js';
import { createApiApp, listen } from '../src/producers/http-api.js';
import { Producer } from '../src/producers/producer.js';
import { LocalProvider } from '../src/secrets/local-provider.js';
import { fixtureType, guardAgainstLeaks, startSupervisor, testConfig, waitForJob } from './helpers/fleet.js';
import { useTestRedis } from './helpers/redis.js';

const ADMIN = 'board-admin-token-0123456789';
const PLAIN = 'board-plain-token-0123456789';
const SECRET_VALUE = 'board-secret-value-987654321';

const redis = useTestRedis();
guardAgainstLeaks();

const basic = (token: string): string => `Basic ${Buffer.from(`anyone:${token}`).toString('base64')}`;

describe('Bull Board', () => {
  it('refuses anyone but an admin producer, is read-only, and shows no secret value', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-board-'));
    await new LocalProvider({ file: path.join(dataDir, 'secrets.enc.json'), keyFile: path.join(dataDir, 'master.key'), masterKeyEnv: 'FLEET_BOARD_NONE', keepVersions: 2 }).write('api-key', Buffer.from(SECRET_VALUE));
    const config = testConfig(redis.url, [fixtureType('ok', 'ok.mjs', { attempts: 1 }), fixtureType('leaky', 'secret-leaker.mjs', { secrets: ['api-key'], attempts: 1 })], {
      dataDir,
      producers: [
        { name: 'ops', tokenSha256: sha256Hex(ADMIN), jobTypes: ['*'], admin: true },
        { name: 'svc', tokenSha256: sha256Hex(PLAIN), jobTypes: ['*'] },
      ],
    });
    await startSupervisor({ config });
    const producer = new Producer({ config });
    const server: Server = await listen(createApiApp({ producer }), '127.0.0.1', 0);
    const base = `http://127.0.0.1:${(server.address() as { port: number }).port}/admin/queues`;
    try {
      const a = await producer.enqueue('ok', { apiToken: 'tok-in-payload-123456', note: 'hello' });
      const b = await producer.enqueue('leaky', { name: 'api-key' });
      const c = await producer.enqueue('leaky', { name: 'api-key', throw: true });
      for (const id of [a.id, b.id, c.id]) await waitForJob(producer, id);

      expect((await fetch(`${base}/`)).status).toBe(401);
      expect((await fetch(`${base}/`, { headers: { authorization: basic(PLAIN) } })).status).toBe(401);
      expect((await fetch(`${base}/`, { headers: { authorization: basic('wrong-token-0123456789abc') } })).status).toBe(401);
      expect((await fetch(`${base}/`, { headers: { authorization: basic(ADMIN) } })).status).toBe(200);

      const bodies: string[] = [];
      for (const [queue, status] of [['ok', 'completed'], ['leaky', 'completed'], ['leaky', 'failed'], ['ok', 'latest']]) {
        const r = await fetch(`${base}/api/queues?activeQueue=${queue}&status=${status}&page=1`, { headers: { authorization: `Bearer ${ADMIN}` } });
        expect(r.status).toBe(200);
        bodies.push(await r.text());
      }
      for (const id of [b.id, c.id]) {
        const r = await fetch(`${base}/api/queues/leaky/${id}/logs`, { headers: { authorization: `Bearer ${ADMIN}` } });
        bodies.push(await r.text());
      }
      const all = bodies.join('\n');
      expect(all).toContain('"apiToken":"***"');
      expect(all).toContain('(secret references)');
      expect(all).toContain('hello');
      for (const leak of [SECRET_VALUE, Buffer.from(SECRET_VALUE).toString('base64'), 'tok-in-payload-123456']) expect(all).not.toContain(leak);

      const retry = await fetch(`${base}/api/queues/leaky/retry/failed`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` } });
      expect(retry.status).toBeGreaterThanOrEqual(400);
      expect((await producer.getJob(c.id)).state).toBe('failed');
    } finally {
      server.close();
      server.closeAllConnections();
      await producer.close();
    }
  });
});
