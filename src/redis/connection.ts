import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { ConnectionOptions } from 'node:tls';
import { isClusterUrl, redisUrlNodes, redisUrlProblem } from '../config/redis-url.js';
import { hasTlsFiles, isRedisTlsUrl, loadTlsFiles, REDIS_TLS, tlsFix, type TlsFiles } from '../config/tls.js';
import { ConfigError, RedisUnavailableError, TlsRefusedError, errorMessage, tlsFailureOf } from '../errors.js';

/** A single Redis or a Redis Cluster; every part of the fleet works with either. */
export type RedisClient = Redis | Cluster;

export type ConnectionRole =
  /** Blocking BullMQ workers: commands wait for a reconnect instead of failing. */
  | 'worker'
  /** Producers and the API: fail fast so a caller gets an error, never a silent drop. */
  | 'producer';

/** ioredis options over the role's defaults; `tls` is the fleet's PEM files (`config.redis.tls`), not ioredis's own. */
export type ConnectOptions = Omit<RedisOptions, 'tls'> & { tls?: TlsFiles };

/** TLS options for a `rediss://` URL (verification always on); none for a plain one, which refuses TLS files. */
function tlsFor(url: string, files: TlsFiles): ConnectionOptions | undefined {
  if (isRedisTlsUrl(url)) return loadTlsFiles(files, REDIS_TLS);
  if (hasTlsFiles(files))
    throw new ConfigError(
      'Redis TLS files (redis.tls / REDIS_TLS_*) are given for a plain redis:// URL, which would send everything in clear. Fix: use the rediss:// form of the URL.',
    );
  return undefined;
}

/**
 * A Redis connection tuned for its role; a URL {@link redisUrlProblem} refuses is refused here too. `redis-cluster://a:7000,b:7001` connects to a Redis
 * Cluster (credentials as in a redis:// URL); `rediss://` and `rediss-cluster://` connect over TLS
 * with `options.tls`'s files. The URL is never logged (it may carry a password).
 */
export function connectRedis(url: string, role: ConnectionRole, extra: ConnectOptions = {}): RedisClient {
  const problem = redisUrlProblem(url);
  if (problem) throw new ConfigError(`the Redis URL ${problem.reason}. Fix: ${problem.fix}.`);
  const { tls: files = {}, ...rest } = extra;
  const tls = tlsFor(url, files);
  const base: RedisOptions =
    role === 'worker'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true }
      : { maxRetriesPerRequest: 2, enableOfflineQueue: false, connectTimeout: 5000 };
  const options: RedisOptions = {
    ...base,
    retryStrategy: (times) => Math.min(times * 200, 2000),
    lazyConnect: false,
    ...rest,
    ...(tls ? { tls } : {}),
  };
  if (!isClusterUrl(url)) return new Redis(url, options);
  const u = new URL(url.replace(/^(rediss?)-cluster:/, '$1:').replace(/,.*$/, ''));
  const { retryStrategy: _r, enableOfflineQueue, lazyConnect, maxRetriesPerRequest, ...redisOptions } = options;
  return new Cluster(redisUrlNodes(url), {
    redisOptions: {
      ...redisOptions,
      maxRetriesPerRequest,
      ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
      ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    },
    // Over TLS the seed nodes are reached by the names in the URL, not the addresses they resolve
    // to, so each certificate is checked against the name the operator wrote.
    ...(tls
      ? { dnsLookup: (address: string, callback: (err: null, address: string) => void) => callback(null, address) }
      : {}),
    enableOfflineQueue: enableOfflineQueue ?? true,
    lazyConnect: lazyConnect ?? false,
    clusterRetryStrategy: (times) => Math.min(times * 200, 2000),
  });
}

/** `host:port` of a connection (a cluster's first known node), for messages. */
function whereOf(redis: RedisClient): string {
  const o = redis instanceof Cluster ? redis.nodes()[0]?.options : redis.options;
  return o ? `${o.host}:${o.port}` : 'the Redis Cluster';
}

/**
 * A Cluster drops its nodes' handshake errors (it asks for the slots over connections whose errors
 * it ignores, and reports only "Failed to refresh slots cache"): one direct connection to a node,
 * with the same options, shows what the handshake says.
 */
async function clusterTlsFailure(cluster: Cluster): Promise<{ err: unknown; where: string } | null> {
  const node = cluster.nodes()[0];
  if (!node?.options.tls) return null;
  const probe = node.duplicate({ lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  let seen: unknown = null;
  const keep = (err: unknown): void => void (tlsFailureOf(err) && (seen ??= err));
  probe.on('error', keep);
  try {
    await probe.connect();
    await probe.ping();
  } catch (err) {
    keep(err);
  } finally {
    probe.disconnect();
  }
  return seen ? { err: seen, where: `${node.options.host}:${node.options.port}` } : null;
}

/**
 * Calls `onRefused` with a named error the first time the connection fails a TLS handshake (a
 * certificate it does not trust, a client certificate the server asks for, a server that does not
 * speak TLS): retrying cannot help, so waiting for the connection stops there. Returns the unsubscribe.
 */
function onTlsRefusal(redis: RedisClient, onRefused: (err: TlsRefusedError) => void): () => void {
  let active = true;
  let probing = false;
  const refuse = (err: unknown, where: string): boolean => {
    const failure = tlsFailureOf(err);
    if (failure && active)
      onRefused(
        new TlsRefusedError(`Redis at ${where} refused TLS: ${failure.reason}. Fix: ${tlsFix(failure, REDIS_TLS)}.`, {
          cause: err,
        }),
      );
    return failure !== null;
  };
  const listener = (err: unknown, node?: unknown): void => {
    if (refuse(err, typeof node === 'string' ? node : whereOf(redis))) return;
    if (redis instanceof Cluster && !probing && errorMessage(err).startsWith('Failed to refresh slots cache')) {
      // Again at each failed refresh while none runs: the server's alert can lose the race with
      // its own close (the client then reads ECONNRESET).
      probing = true;
      void clusterTlsFailure(redis).then((found) => {
        probing = false;
        if (found) refuse(found.err, found.where);
      });
    }
  };
  redis.on('error', listener);
  if (redis instanceof Cluster) redis.on('node error', listener);
  return () => {
    active = false;
    redis.off('error', listener);
    if (redis instanceof Cluster) redis.off('node error', listener);
  };
}

/**
 * Runs `fn` on a short-lived connection to `url` (a CLI command, an ACL rotation): opened, waited
 * for (a clear error when Redis is not there), and closed whatever `fn` does.
 */
export async function withConnection<T>(
  url: string,
  extra: ConnectOptions,
  fn: (r: RedisClient) => Promise<T>,
): Promise<T> {
  const redis = connectRedis(url, 'producer', extra);
  redis.on('error', () => undefined);
  try {
    await ensureReady(redis);
    return await fn(redis);
  } finally {
    redis.disconnect();
  }
}

/** A second connection like `client` (for pub/sub). */
export function duplicateClient(client: RedisClient): RedisClient {
  return client instanceof Cluster ? client.duplicate() : client.duplicate();
}

/** Waits until the connection answers PING, or fails with a message naming Redis and the fix. */
export async function waitForRedis(redis: RedisClient, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  let refused: TlsRefusedError | undefined;
  const unsubscribe = onTlsRefusal(redis, (err) => (refused ??= err));
  try {
    while (Date.now() < deadline && !refused) {
      try {
        if (redis.status === 'ready' && (await redis.ping()) === 'PONG') return;
      } catch (err) {
        last = err;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    unsubscribe();
  }
  if (refused) throw refused;
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
  // One wait per connection, however many callers: a burst of requests while it (re)connects
  // shares it instead of adding a pair of listeners each (and tripping Node's leak warning).
  let wait = readyWaits.get(redis);
  if (!wait) {
    wait = untilReady(redis, timeoutMs).finally(() => readyWaits.delete(redis));
    readyWaits.set(redis, wait);
  }
  return wait;
}

const readyWaits = new WeakMap<RedisClient, Promise<void>>();

function untilReady(redis: RedisClient, timeoutMs: number): Promise<void> {
  // A lazy connection (the CLI opens one only for commands that need Redis) starts here.
  if (redis.status === 'wait') void redis.connect().catch(() => undefined);
  return new Promise((resolve, reject) => {
    const done = (): void => {
      clearTimeout(timer);
      redis.off('ready', onReady);
      unsubscribe();
    };
    const timer = setTimeout(() => {
      done();
      reject(
        new RedisUnavailableError(
          `Redis is not reachable (connection ${redis.status} for ${timeoutMs} ms). Fix: check REDIS_URL and that Redis is up.`,
        ),
      );
    }, timeoutMs);
    const onReady = (): void => {
      done();
      resolve();
    };
    const unsubscribe = onTlsRefusal(redis, (err) => {
      done();
      reject(err);
    });
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
