/**
 * What every `fleet` command is given: the parsed command line, the config, where to write, and
 * a Redis connection as the role the command needs (see `fleet redis setup`).
 */
import { parseArgs } from 'node:util';
import { discoverRedisAccess } from '../app.js';
import type { FleetConfig } from '../config/resolve.js';
import { FleetError } from '../errors.js';
import type { RedisRole } from '../redis/acl.js';
import { connectRedis, withConnection, type RedisClient } from '../redis/connection.js';

export interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** Parses argv: the options of every command (any other is refused), and the positionals. */
export function parseCommandLine(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      role: { type: 'string', default: 'all' },
      'metrics-port': { type: 'string' },
      json: { type: 'boolean', default: false },
      workers: { type: 'boolean', default: false },
      'idempotency-key': { type: 'string' },
      secrets: { type: 'boolean', default: false },
      now: { type: 'boolean', default: false },
      production: { type: 'boolean', default: process.env.NODE_ENV === 'production' },
      'metrics-url': { type: 'string', multiple: true },
      'prometheus-url': { type: 'string' },
      provider: { type: 'string' },
      since: { type: 'string' },
      secret: { type: 'string' },
      denied: { type: 'boolean', default: false },
      limit: { type: 'string' },
      file: { type: 'string' },
      'keep-old': { type: 'boolean', default: false },
      'drop-old': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
}

export interface CommandContext {
  config: FleetConfig;
  opts: ReturnType<typeof parseCommandLine>['values'];
  /** The positionals after the command's name (a subcommand, a name, a payload). */
  args: string[];
  io: Io;
  /** Writes the human text, or with `--json` the data as JSON. */
  print: (human: string, data: unknown) => void;
}

/** Runs one command; resolves with the exit code. */
export type Command = (ctx: CommandContext) => Promise<number>;

/** The Redis URL for a command, as the Redis role that command needs (see `fleet redis setup`). */
export function need(config: FleetConfig, role: RedisRole): string {
  const access = discoverRedisAccess(config);
  if (!access)
    throw new FleetError(
      'REDIS_UNAVAILABLE',
      'no Redis to talk to. Fix: set REDIS_URL, or run `npm start` (which starts a private Redis) in this folder first.',
    );
  return access.urlFor(role);
}

export async function withRedis<T>(
  config: FleetConfig,
  role: RedisRole,
  fn: (r: RedisClient) => Promise<T>,
): Promise<T> {
  return withConnection(need(config, role), { tls: config.redis.tls }, fn);
}

/**
 * For commands that can work without Redis (the local store keeps its own files): a lazy
 * connection as `role` when a Redis is known, else none.
 */
export async function withOptionalRedis<T>(
  config: FleetConfig,
  role: RedisRole,
  fn: (r: RedisClient | undefined) => Promise<T>,
): Promise<T> {
  const url = discoverRedisAccess(config)?.urlFor(role);
  const redis = url ? connectRedis(url, 'producer', { lazyConnect: true, tls: config.redis.tls }) : undefined;
  redis?.on('error', () => undefined);
  try {
    return await fn(redis);
  } finally {
    redis?.disconnect();
  }
}
