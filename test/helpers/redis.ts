import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll } from 'vitest';
import { loadTlsFiles, REDIS_TLS, type TlsFiles } from '../../src/config/tls.js';
import { startEmbeddedRedis, type EmbeddedRedis } from '../../src/redis/embedded-redis.js';

/**
 * A real redis-server for one test file: free loopback port, no persistence. Each test then
 * takes its own key prefix from `uniquePrefix()`, so tests never see each other's queues.
 */
export async function startTestRedis(): Promise<EmbeddedRedis & { dir: string }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-redis-'));
  const redis = await startEmbeddedRedis({ dataDir: dir, persistent: false });
  return {
    ...redis,
    dir,
    async release() {
      await redis.release();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A test Redis's URL, and a client to it made on first use. */
export interface TestRedis {
  readonly url: string;
  readonly client: Redis;
}

/** Starts a test Redis with its client (made on first use); `release()` closes both. */
export async function openTestRedis(): Promise<TestRedis & { release(): Promise<void> }> {
  const server = await startTestRedis();
  let client: Redis | undefined;
  return {
    url: server.url,
    get client(): Redis {
      client ??= new Redis(server.url);
      return client;
    },
    async release() {
      client?.disconnect();
      await server.release();
    },
  };
}

/**
 * A test Redis for the whole file (and a client to it): started before its tests, released after
 * them. Files on the test fixture (fixture.ts) get it as `redis` in each test instead.
 */
export function useTestRedis(): TestRedis {
  let redis: Awaited<ReturnType<typeof openTestRedis>> | undefined;
  beforeAll(async () => {
    redis = await openTestRedis();
  });
  afterAll(async () => {
    await redis?.release();
  });
  return {
    get url(): string {
      if (!redis) throw new Error('test Redis is not started yet (use it inside tests or hooks)');
      return redis.url;
    },
    get client(): Redis {
      if (!redis) throw new Error('test Redis is not started yet (use it inside tests or hooks)');
      return redis.client;
    },
  };
}

export function uniquePrefix(): string {
  return `t${randomUUID().slice(0, 8)}`;
}

/** Every key and value under a prefix, for leak scans and assertions; `tls` for a rediss:// URL. */
export async function dumpKeys(url: string, pattern = '*', tls?: TlsFiles): Promise<Map<string, string>> {
  const r = new Redis(url, tls ? { tls: loadTlsFiles(tls, REDIS_TLS) } : {});
  try {
    const out = new Map<string, string>();
    for (const key of await r.keys(pattern)) {
      const type = await r.type(key);
      let v: unknown;
      if (type === 'string') v = await r.get(key);
      else if (type === 'hash') v = await r.hgetall(key);
      else if (type === 'list') v = await r.lrange(key, 0, -1);
      else if (type === 'set') v = await r.smembers(key);
      else if (type === 'zset') v = await r.zrange(key, '0', '-1', 'WITHSCORES');
      else if (type === 'stream') v = await r.xrange(key, '-', '+');
      out.set(key, JSON.stringify(v));
    }
    return out;
  } finally {
    r.disconnect();
  }
}
