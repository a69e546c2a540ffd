import type { RedisClient } from '../redis/connection.js';
import { toError } from '../errors.js';
import { auditStreamKey, secretStatsKey } from '../redis/keys.js';
import type { Logger } from '../observability/logger.js';

export type AuditOutcome = 'granted' | 'denied' | 'error';

/** One secret access attempt. Never holds the value. */
export interface AuditRecord {
  ts: number;
  outcome: AuditOutcome;
  secret: string;
  /** Version handed out (granted only). */
  version?: string;
  jobId: string;
  jobType: string;
  workerId: string;
  provider: string;
  latencyMs: number;
  /** Error code, for denied and error outcomes. */
  reason?: string;
  /** `access` for a job's read; rotation steps use their own actions. */
  action: string;
}

export interface SecretStats {
  secret: string;
  granted: number;
  denied: number;
  errors: number;
  lastAccessAt: number | null;
  lastVersion: string | null;
}


/**
 * Appends every access attempt to a Redis Stream (bounded by `maxEntries`) and writes it as a
 * structured log line. If Redis refuses the write, the record is kept in memory and retried: an
 * audit record is never silently dropped (the log line is always written).
 */
export class AuditLog {
  readonly #redis: RedisClient;
  readonly #prefix: string;
  readonly #log: Logger;
  readonly #maxEntries: number;
  readonly #pending: AuditRecord[] = [];
  /** Records of this tick, written together in one MULTI. */
  #batch: AuditRecord[] = [];
  #retry: NodeJS.Timeout | null = null;
  #inflight = new Set<Promise<void>>();

  constructor(options: { redis: RedisClient; prefix: string; logger: Logger; maxEntries: number }) {
    this.#redis = options.redis;
    this.#prefix = options.prefix;
    this.#log = options.logger.scope({ component: 'audit' });
    this.#maxEntries = options.maxEntries;
  }

  record(rec: AuditRecord): void {
    this.#log.info('secret access', { audit: true, ...rec });
    this.#batch.push(rec);
    if (this.#batch.length === 1) setImmediate(() => this.#flushBatch());
  }

  #flushBatch(): void {
    const batch = this.#batch;
    this.#batch = [];
    if (!batch.length) return;
    const p = this.#write(batch).finally(() => this.#inflight.delete(p));
    this.#inflight.add(p);
  }

  async #write(records: AuditRecord[]): Promise<void> {
    try {
      const multi = this.#redis.multi();
      const perSecret = new Map<string, { counts: Map<AuditOutcome, number>; last: AuditRecord }>();
      for (const r of records) {
        const fields = Object.entries(r).flatMap(([k, v]) => (v === undefined ? [] : [k, String(v)]));
        multi.xadd(auditStreamKey(this.#prefix), 'MAXLEN', '~', String(this.#maxEntries), '*', ...fields);
        const agg = perSecret.get(r.secret) ?? { counts: new Map(), last: r };
        agg.counts.set(r.outcome, (agg.counts.get(r.outcome) ?? 0) + 1);
        if (r.ts >= agg.last.ts) agg.last = r;
        perSecret.set(r.secret, agg);
      }
      for (const [secret, { counts, last }] of perSecret) {
        const stats = secretStatsKey(this.#prefix, secret);
        for (const [outcome, n] of counts) multi.hincrby(stats, outcome, n);
        multi.hset(stats, 'lastAccessAt', String(last.ts), ...(last.version ? ['lastVersion', last.version] : []));
      }
      const res = await multi.exec();
      const failed = res?.find(([err]) => err);
      if (!res || failed) throw failed?.[0] ?? new Error('transaction aborted');
    } catch (err) {
      this.#pending.push(...records);
      this.#log.error('audit write to Redis failed; kept in memory and retried', { error: toError(err).message, pending: this.#pending.length });
      this.#retry ??= setTimeout(() => {
        this.#retry = null;
        const batch = this.#pending.splice(0);
        if (batch.length) void this.#write(batch);
      }, 1000);
    }
  }

  get pending(): number {
    return this.#pending.length;
  }

  /** Waits for writes under way and tries once more to write anything pending. */
  async flush(): Promise<void> {
    this.#flushBatch();
    await Promise.all(this.#inflight);
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
    const batch = this.#pending.splice(0);
    if (batch.length) await this.#write(batch);
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
  }
}

export interface AuditQuery {
  sinceMs?: number;
  secret?: string;
  deniedOnly?: boolean;
  /** @defaultValue 1000 */
  limit?: number;
}

/** Newest first. */
export async function readAudit(redis: RedisClient, prefix: string, q: AuditQuery = {}): Promise<AuditRecord[]> {
  const limit = q.limit ?? 1000;
  const out: AuditRecord[] = [];
  let end = '+';
  const start = q.sinceMs ? `${q.sinceMs}-0` : '-';
  while (out.length < limit) {
    const page = await redis.xrevrange(auditStreamKey(prefix), end, start, 'COUNT', 500);
    if (!page.length) break;
    for (const [, fields] of page) {
      const r: Record<string, string> = {};
      for (let i = 0; i < fields.length; i += 2) r[fields[i]!] = fields[i + 1]!;
      const rec: AuditRecord = {
        ts: Number(r.ts),
        outcome: r.outcome as AuditOutcome,
        secret: r.secret ?? '',
        jobId: r.jobId ?? '',
        jobType: r.jobType ?? '',
        workerId: r.workerId ?? '',
        provider: r.provider ?? '',
        latencyMs: Number(r.latencyMs),
        action: r.action ?? 'access',
        ...(r.version ? { version: r.version } : {}),
        ...(r.reason ? { reason: r.reason } : {}),
      };
      if (q.secret && rec.secret !== q.secret) continue;
      if (q.deniedOnly && rec.outcome !== 'denied') continue;
      out.push(rec);
      if (out.length >= limit) break;
    }
    const last = page[page.length - 1]!;
    end = `(${last[0]}`;
    if (page.length < 500) break;
  }
  return out;
}

export async function readSecretStats(redis: RedisClient, prefix: string, names: readonly string[]): Promise<SecretStats[]> {
  return Promise.all(
    names.map(async (secret) => {
      const h = await redis.hgetall(secretStatsKey(prefix, secret));
      return {
        secret,
        granted: Number(h.granted ?? 0),
        denied: Number(h.denied ?? 0),
        errors: Number(h.error ?? 0),
        lastAccessAt: h.lastAccessAt ? Number(h.lastAccessAt) : null,
        lastVersion: h.lastVersion ?? null,
      };
    }),
  );
}
