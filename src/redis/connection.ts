import { Cluster, Redis, type RedisOptions } from 'ioredis';

/** A single Redis or a Redis Cluster; every part of the fleet works with either. */
export type RedisClient = Redis | Cluster;

/** `redis-cluster://host1:port1,host2:port2` names cluster seed nodes. */
export function isClusterUrl(url: string): boolean {
  return url.startsWith('redis-cluster://') || url.startsWith('rediss-cluster://');
}
import { RedisUnavailableError, errorMessage } from '../errors.js';

export type ConnectionRole =
  /** Blocking BullMQ workers: commands wait for a reconnect instead of failing. */
  | 'worker'
  /** Producers and the API: fail fast so a caller gets an error, never a silent drop. */
  | 'producer';

/**
 * A Redis connection tuned for its role. `redis-cluster://a:7000,b:7001` connects to a Redis
 * Cluster (credentials as in a redis:// URL). The URL is never logged (it may carry a password).
 */
export function connectRedis(url: string, role: ConnectionRole, extra: RedisOptions = {}): RedisClient {
  const base: RedisOptions =
    role === 'worker'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true }
      : { maxRetriesPerRequest: 2, enableOfflineQueue: false, connectTimeout: 5000 };
  const options: RedisOptions = {
    ...base,
    retryStrategy: (times) => Math.min(times * 200, 2000),
    lazyConnect: false,
    ...extra,
  };
  if (!isClusterUrl(url)) return new Redis(url, options);
  const u = new URL(url.replace(/^(rediss?)-cluster:/, '$1:').replace(/,.*$/, ''));
  const hosts = url
    .replace(/^[a-z-]+:\/\/([^@]*@)?/, '')
    .replace(/\/.*$/, '')
    .split(',');
  const nodes = hosts.map((h) => {
    const [host = '', port] = h.split(':');
    return { host, port: Number(port ?? 6379) };
  });
  const { retryStrategy: _r, enableOfflineQueue, lazyConnect, maxRetriesPerRequest, ...redisOptions } = options;
  return new Cluster(nodes, {
    redisOptions: {
      ...redisOptions,
      maxRetriesPerRequest,
      ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
      ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
      ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    },
    enableOfflineQueue: enableOfflineQueue ?? true,
    lazyConnect: lazyConnect ?? false,
    clusterRetryStrategy: (times) => Math.min(times * 200, 2000),
  });
}

/** A second connection like `client` (for pub/sub). */
export function duplicateClient(client: RedisClient): RedisClient {
  return client instanceof Cluster ? client.duplicate() : client.duplicate();
}

/** Waits until the connection answers PING, or fails with a message naming Redis and the fix. */
export async function waitForRedis(redis: RedisClient, timeoutMs = 10_000): Promise<void> {
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
    `Redis did not answer within ${timeoutMs} ms${last ? ` (${errorMessage(last)})` : ''}. Fix: check REDIS_URL / redis.url and that redis-server is running.`,
    { cause: last },
  );
}

/**
 * Resolves once the connection is ready. Fail-fast connections refuse commands while they are
 * (re)connecting; callers wait here a bounded time instead, then get a clear error.
 */
export function ensureReady(redis: RedisClient, timeoutMs = 5000): Promise<void> {
  if (redis.status === 'ready') return Promise.resolve();
  // A lazy connection (the CLI opens one only for commands that need Redis) starts here.
  if (redis.status === 'wait') void redis.connect().catch(() => undefined);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      redis.off('ready', onReady);
      reject(
        new RedisUnavailableError(
          `Redis is not reachable (connection ${redis.status} for ${timeoutMs} ms). Fix: check REDIS_URL and that Redis is up.`,
        ),
      );
    }, timeoutMs);
    const onReady = (): void => {
      clearTimeout(timer);
      resolve();
    };
    redis.once('ready', onReady);
  });
}

/** One setting read with CONFIG GET ('' when the server does not know it). */
export async function configGet(client: Redis | Cluster, name: string): Promise<string> {
  const reply: unknown = await client.config('GET', name);
  return Array.isArray(reply) && typeof reply[1] === 'string' ? reply[1] : '';
}

/** ACL GETUSER's answer as field → value (`flags`, `passwords`, `commands`, …); null without such a user or the right. */
export async function aclGetUser(client: Redis | Cluster, username: string): Promise<Map<string, unknown> | null> {
  const reply: unknown = await client.call('ACL', 'GETUSER', username).catch(() => null);
  if (!Array.isArray(reply)) return null;
  const fields = new Map<string, unknown>();
  for (let i = 0; i + 1 < reply.length; i += 2) fields.set(String(reply[i]), reply[i + 1]);
  return fields;
}

/** A Redis reply that should be a list of strings, as one ([] for anything else). */
export const stringList = (reply: unknown): string[] => (Array.isArray(reply) ? reply.map(String) : []);

/**
 * Start-up check of the Redis the fleet will use: an evicting Redis silently loses jobs and audit
 * records, so it is refused; missing persistence is a warning (fine for development).
 */
export async function checkRedisSettings(redis: RedisClient, warn: (msg: string) => void): Promise<void> {
  const client = redis instanceof Cluster ? redis.nodes('master')[0] : redis;
  if (!client) return;
  let policy: string;
  let aof: string;
  try {
    policy = await configGet(client, 'maxmemory-policy');
    aof = await configGet(client, 'appendonly');
  } catch (err) {
    warn(
      `could not read Redis CONFIG (${errorMessage(err)}); make sure maxmemory-policy is noeviction and persistence is on`,
    );
    return;
  }
  if (policy !== 'noeviction') {
    throw new RedisUnavailableError(
      `Redis maxmemory-policy is "${policy}": evicted keys are lost jobs and audit records. Fix: set maxmemory-policy noeviction (redis-server --maxmemory-policy noeviction).`,
      { retryable: false },
    );
  }
  if (aof !== 'yes')
    warn(
      'Redis persistence: AOF is off, so a Redis restart can lose queued jobs. For production: redis-server --appendonly yes.',
    );
}

/** Redact credentials from a Redis URL before it is shown anywhere. */
export function redactUrl(url: string): string {
  if (isClusterUrl(url)) return url.replace(/\/\/[^@]*@/, '//***@');
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable url)';
  }
}
