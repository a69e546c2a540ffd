import type { Server } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sha256Hex } from '../../src/api/auth.js';
import { listen } from '../../src/api/api-server.js';
import { createApiApp } from '../../src/api/http-api.js';
import { Producer } from '../../src/producers/producer.js';
import { fixtureType, startSupervisor, testConfig, waitForJob, localStore } from './fleet.js';

/**
 * A fleet for the Bull Board tests: types `ok` and `leaky` (which tries to leak its secret
 * `api-key`), an admin and a non-admin producer, a supervisor, the API, and three finished jobs
 * (one with a sensitive-looking payload field, one completed and one failed `leaky` job).
 */
export async function boardFleet(
  redisUrl: string,
  tokens: { admin: string; plain: string },
  secretValue: string,
): Promise<{ base: string; producer: Producer; jobs: { id: string }[]; release(): Promise<void> }> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-board-'));
  await localStore(dataDir, 2).write('api-key', Buffer.from(secretValue));
  const config = testConfig(
    redisUrl,
    [
      fixtureType('ok', 'ok.mjs', { attempts: 1 }),
      fixtureType('leaky', 'secret-leaker.mjs', { secrets: ['api-key'], attempts: 1 }),
    ],
    {
      dataDir,
      producers: [
        { name: 'ops', tokenSha256: sha256Hex(tokens.admin), jobTypes: ['*'], admin: true },
        { name: 'svc', tokenSha256: sha256Hex(tokens.plain), jobTypes: ['*'] },
      ],
    },
  );
  await startSupervisor({ config });
  const producer = new Producer({ config });
  const server: Server = await listen(createApiApp({ producer }), '127.0.0.1', 0);
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}/admin/queues`;
  const jobs = [
    await producer.enqueue('ok', { apiToken: 'tok-in-payload-123456', note: 'hello' }),
    await producer.enqueue('leaky', { name: 'api-key' }),
    await producer.enqueue('leaky', { name: 'api-key', throw: true }),
  ];
  for (const j of jobs) await waitForJob(producer, j.id);
  return {
    base,
    producer,
    jobs,
    release: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await producer.close();
    },
  };
}
