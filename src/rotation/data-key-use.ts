import type { FleetConfig } from '../config/resolve.js';
import type { Clock } from '../clock.js';
import { toError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { RedisClient } from '../redis/connection.js';
import { queueKey } from '../redis/keys.js';
import type { SecretProvider } from '../secrets/provider.js';
import { dataKeyRing } from '../secrets/providers.js';

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

/** Whether a list (a job's log lines, each sealed on its own) holds an envelope under the version. */
async function listHolds(redis: RedisClient, key: string, needle: string): Promise<boolean> {
  for (let start = 0; ; start += PAGE) {
    const lines = await redis.lrange(key, start, start + PAGE - 1);
    if (lines.some((l) => l.includes(needle))) return true;
    if (lines.length < PAGE) return false;
  }
}

/**
 * Ids of stored jobs (of types with `encryptData`) holding data sealed under data key `version`
 * (in the job's hash or its log lines), up to `limit`: the rotation service retires a version only
 * when there are none. Reads with plain read commands (LRANGE, ZRANGE, HMGET), page by page.
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
        const uses = await Promise.all(
          ids.map(
            async (id) =>
              (await redis.hmget(queueKey(prefix, t.name, id), ...FIELDS)).some((v) => v?.includes(needle)) ||
              (await listHolds(redis, queueKey(prefix, t.name, `${id}:logs`), needle)),
          ),
        );
        ids.forEach((id, i) => {
          if (uses[i]) found.push(id);
        });
        if (found.length >= limit) return found.slice(0, limit);
        if (ids.length < PAGE) break;
      }
    }
  }
  return found;
}

/**
 * A data key version retires only once no stored job is sealed under it: while some are, its
 * retirement (`retire:<version>` in the rotation state at `stateKey`, already claimed by the
 * sweep) moves on by another grace window, and a scan that fails retries in a minute; a job
 * waiting longer than one window loses nothing. Answers whether the retirement waits.
 */
export async function dataKeyRetirementWaits(o: {
  redis: RedisClient;
  config: FleetConfig;
  clock: Clock;
  log: Logger;
  version: string;
  stateKey: string;
  graceSeconds: number;
}): Promise<boolean> {
  const users = await jobsSealedUnder(o.redis, o.config, o.version).catch(async (err: unknown) => {
    await o.redis.hset(o.stateKey, `retire:${o.version}`, String(o.clock.now() + 60_000));
    throw err;
  });
  if (!users.length) return false;
  const graceMs = Math.max(1000, o.graceSeconds * 1000);
  await o.redis.hset(o.stateKey, `retire:${o.version}`, String(o.clock.now() + graceMs));
  o.log.info('data key version still seals stored jobs; its retirement waits', {
    secret: o.config.secrets.dataKey.name,
    version: o.version,
    jobs: users,
    retryInMs: graceMs,
  });
  return true;
}

/**
 * Creates the data key of job data at rest when its store (`provider`) has none: the scheduler's
 * identity may write KMS envelopes, which supervisors and the API may only read. Not fatal:
 * producers and supervisors say what is missing when they need it.
 */
export async function ensureDataKey(config: FleetConfig, provider: SecretProvider, log: Logger): Promise<void> {
  const name = config.secrets.dataKey.name;
  const ring = dataKeyRing(config, provider);
  try {
    const key = await ring.current();
    log.info('data key for job data at rest is ready', { secret: name, version: key.version });
  } catch (err) {
    log.warn('the data key for job data at rest is not ready', { secret: name, error: toError(err).message });
  } finally {
    ring.discard();
  }
}
