import { Redis, type RedisOptions } from 'ioredis';
import { RedisUnavailableError } from '../errors.js';

/**
 * Every queue of a job type lives under its own hash tag (`fleet:{echo}:echo:*`): in a Redis
 * Cluster one queue's keys share a slot, as BullMQ's scripts need, while different types spread
 * over shards.
 */
export function queuePrefix(prefix: string, jobType: string): string {
  return `${prefix}:{${jobType}}`;
}

export type ConnectionRole =
  /** Blocking BullMQ workers: commands wait for a reconnect instead of failing. */
  | 'worker'
  /** Producers and the API: fail fast so a caller gets an error, never a silent drop. */
  | 'producer';

/** A Redis connection tuned for its role. The URL is never logged (it may carry a password). */
export function connectRedis(url: string, role: ConnectionRole, extra: RedisOptions = {}): Redis {
  const base: RedisOptions =
    role === 'worker'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true }
      : { maxRetriesPerRequest: 2, enableOfflineQueue: false, connectTimeout: 5000 };
  return new Redis(url, {
    ...base,
    retryStrategy: (times) => Math.min(times * 200, 2000),
    lazyConnect: false,
    ...extra,
  });
}

/** Waits until the connection answers PING, or fails with a message naming Redis and the fix. */
export async function waitForRedis(redis: Redis, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      if (redis.status === 'ready' && (await redis.ping()) === 'PONG') return;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new RedisUnavailableError(
    `Redis did not answer within ${timeoutMs} ms${last ? ` (${(last as Error).message})` : ''}. Fix: check REDIS_URL / redis.url and that redis-server is running.`,
    { cause: last },
  );
}

/**
 * Resolves once the connection is ready. Fail-fast connections refuse commands while they are
 * (re)connecting; callers wait here a bounded time instead, then get a clear error.
 */
export function ensureReady(redis: Redis, timeoutMs = 5000): Promise<void> {
  if (redis.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      redis.off('ready', onReady);
      reject(new RedisUnavailableError(`Redis is not reachable (connection ${redis.status} for ${timeoutMs} ms). Fix: check REDIS_URL and that Redis is up.`));
    }, timeoutMs);
    const onReady = (): void => {
      clearTimeout(timer);
      resolve();
    };
    redis.once('ready', onReady);
  });
}

/** Redact credentials from a Redis URL before it is shown anywhere. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable url)';
  }
}
