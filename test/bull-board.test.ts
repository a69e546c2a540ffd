import { boardFleet } from './helpers/board.js';
import { describe, expect, it } from './helpers/fixture.js';

const ADMIN = 'board-admin-token-0123456789';
const PLAIN = 'board-plain-token-0123456789';
const SECRET_VALUE = 'board-secret-value-987654321';

const basic = (token: string): string => `Basic ${Buffer.from(`anyone:${token}`).toString('base64')}`;

describe('Bull Board', () => {
  it('refuses anyone but an admin producer, is read-only, and shows no secret value', async ({ redis }) => {
    const board = await boardFleet(redis.url, { admin: ADMIN, plain: PLAIN }, SECRET_VALUE);
    const { base, producer } = board;
    const [_a, b, c] = board.jobs as [{ id: string }, { id: string }, { id: string }];
    try {
      expect((await fetch(`${base}/`)).status).toBe(401);
      expect((await fetch(`${base}/`, { headers: { authorization: basic(PLAIN) } })).status).toBe(401);
      expect((await fetch(`${base}/`, { headers: { authorization: basic('wrong-token-0123456789abc') } })).status).toBe(
        401,
      );
      expect((await fetch(`${base}/`, { headers: { authorization: basic(ADMIN) } })).status).toBe(200);

      const bodies: string[] = [];
      for (const [queue, status] of [
        ['ok', 'completed'],
        ['leaky', 'completed'],
        ['leaky', 'failed'],
        ['ok', 'latest'],
      ]) {
        const r = await fetch(`${base}/api/queues?activeQueue=${queue}&status=${status}&page=1`, {
          headers: { authorization: `Bearer ${ADMIN}` },
        });
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
      for (const leak of [SECRET_VALUE, Buffer.from(SECRET_VALUE).toString('base64'), 'tok-in-payload-123456'])
        expect(all).not.toContain(leak);

      const retry = await fetch(`${base}/api/queues/leaky/retry/failed`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${ADMIN}` },
      });
      expect(retry.status).toBeGreaterThanOrEqual(400);
      expect((await producer.getJob(c.id)).state).toBe('failed');
    } finally {
      await board.release();
    }
  });
});
