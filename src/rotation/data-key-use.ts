import type { FleetConfig } from '../config/resolve.js';
import type { RedisClient } from '../redis/connection.js';
import { queueKey } from '../redis/keys.js';

/**
 * BullMQ's job lists and sorted sets, in the order jobs flow through them: a job that moves on
 * while the scan runs is met again in a later one.
 */
const STATES: readonly { name: string; kind: 'list' | 'zset' }[] = [
  { name: 'delayed', kind: 'zset' },
  { name: 'prioritized', kind: 'zset' },
  { name: 'waiting-children', kind: 'zset' },
  { name: 'paused', kind: 'list' },
  { name: 'wait', kind: 'list' },
  { name: 'active', kind: 'list' },
  { name: 'completed', kind: 'zset' },
  { name: 'failed', kind: 'zset' },
];
const PAGE = 500;
/** The job hash fields that may hold an envelope. */
const FIELDS = ['data', 'returnvalue', 'progress', 'failedReason'] as const;

/**
 * Ids of stored jobs (of types with `encryptData`) holding data sealed under data key `version`,
 * up to `limit`: the rotation service retires a version only when there are none. Reads with plain
 * read commands (LRANGE, ZRANGE, HMGET), page by page.
 */
export async function jobsSealedUnder(
  redis: RedisClient,
  config: FleetConfig,
  version: string,
  limit = 10,
): Promise<string[]> {
  const needle = `fleet:v1:${version}:`;
  const found: string[] = [];
  const prefix = config.redis.prefix;
  for (const t of config.jobTypes.values()) {
    if (!t.encryptData) continue;
    for (const state of STATES) {
      const key = queueKey(prefix, t.name, state.name);
      for (let start = 0; ; start += PAGE) {
        const ids =
          state.kind === 'list'
            ? await redis.lrange(key, start, start + PAGE - 1)
            : await redis.zrange(key, String(start), String(start + PAGE - 1));
        if (!ids.length) break;
        const rows = await Promise.all(ids.map((id) => redis.hmget(queueKey(prefix, t.name, id), ...FIELDS)));
        rows.forEach((row, i) => {
          const id = ids[i];
          if (id !== undefined && row.some((v) => v?.includes(needle))) found.push(id);
        });
        if (found.length >= limit) return found.slice(0, limit);
        if (ids.length < PAGE) break;
      }
    }
  }
  return found;
}
