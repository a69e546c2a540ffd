import type { RedisClient } from '../redis/connection.js';
import { toError } from '../errors.js';
import { isOneOf } from '../guards.js';
import { closeSync, openSync, writeSync } from 'node:fs';
import { auditHeadsKey, auditStreamKey, secretStatsKey } from '../redis/keys.js';
import {
  ChainWriter,
  loadAuditKeys,
  verifyEntries,
  type AuditEntry,
  type AuditKeyRing,
  type ChainLink,
  type VerifyReport,
} from './audit-chain.js';
import type { SecretProvider } from './provider.js';
import type { Logger } from '../observability/logger.js';

export const AUDIT_OUTCOMES = ['granted', 'denied', 'error'] as const;
export type AuditOutcome = (typeof AUDIT_OUTCOMES)[number];

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

/** Where audit records are copied outside Redis, as JSON lines with their MAC chain fields. */
export interface AuditSink {
  write(line: string): void;
  close(): Promise<void>;
}

/** JSON lines appended to a file (O_APPEND, so several writers may share it) or written to stdout. */
export function openAuditSink(target: string): AuditSink {
  if (target === '-' || target === 'stdout')
    return { write: (line) => void process.stdout.write(`${line}\n`), close: () => Promise.resolve() };
  const fd = openSync(target, 'a', 0o600);
  return {
    write: (line) => void writeSync(fd, `${line}\n`),
    close: () => {
      closeSync(fd);
      return Promise.resolve();
    },
  };
}

function fieldsOf(rec: AuditRecord): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(rec)) if (v !== undefined) out[k] = String(v);
  return out;
}

/**
 * Appends every access attempt to a Redis Stream and writes it as a structured log line (and to
 * the export sink, if any). Each record is sealed into this writer's MAC chain (see
 * audit-chain.ts) and the chain's head is written in the same MULTI. Writes go one transaction at
 * a time, in order, so the stream holds each writer's records in its own order. If Redis refuses
 * a write, the records stay queued and are retried: an audit record is never silently dropped
 * (the log line is always written). Trimming is not the writers' business: the retention path
 * trims, leaving a signed checkpoint.
 */
export class AuditLog {
  readonly #redis: RedisClient;
  readonly #prefix: string;
  readonly #log: Logger;
  #chain: ChainWriter | null;
  readonly #sink: AuditSink | null;
  /** Records waiting for the MAC key (a chain), oldest first. */
  #unsealed: Record<string, string>[] = [];
  /** Sealed records not yet in Redis, oldest first. */
  #queue: Record<string, string>[] = [];
  /** Without a chain, records wait for one (`attach`) instead of being written unsealed. */
  readonly #awaitChain: boolean;
  #writing: Promise<void> | null = null;
  #retry: NodeJS.Timeout | null = null;
  #scheduled = false;

  constructor(options: {
    redis: RedisClient;
    prefix: string;
    logger: Logger;
    /** `'pending'`: the MAC key is still being read; records wait for `attach()`. */
    chain: ChainWriter | null | 'pending';
    sink?: AuditSink | null;
  }) {
    this.#redis = options.redis;
    this.#prefix = options.prefix;
    this.#log = options.logger.scope({ component: 'audit' });
    this.#chain = options.chain === 'pending' ? null : options.chain;
    this.#awaitChain = options.chain === 'pending';
    this.#sink = options.sink ?? null;
  }

  /** The chain, once the MAC key has been read: records waiting for it are sealed in order and written. */
  attach(chain: ChainWriter): void {
    this.#chain = chain;
    void this.#drain();
  }

  get sealing(): boolean {
    return this.#chain !== null;
  }

  record(rec: AuditRecord): void {
    this.#log.info('secret access', { audit: true, ...rec });
    this.#unsealed.push(fieldsOf(rec));
    this.#schedule();
  }

  /** Seals what waits (in record order) and copies it to the export sink. */
  #seal(force = false): void {
    if (!this.#unsealed.length || (!this.#chain && this.#awaitChain && !force)) return;
    for (const fields of this.#unsealed.splice(0)) {
      const sealed = this.#chain ? this.#chain.seal(fields) : fields;
      this.#sink?.write(JSON.stringify(sealed));
      this.#queue.push(sealed);
    }
  }

  #schedule(): void {
    if (!this.#scheduled && !this.#retry) {
      this.#scheduled = true;
      setImmediate(() => {
        this.#scheduled = false;
        void this.#drain();
      });
    }
  }

  /** Writes everything queued, one MULTI at a time. */
  #drain(): Promise<void> {
    if (this.#writing) return this.#writing;
    const run = async (): Promise<void> => {
      try {
        // Records that arrive while a write is under way are sealed on the next turn.
        for (this.#seal(); this.#queue.length; this.#seal()) {
          const batch = this.#queue.slice(0, 500);
          await this.#write(batch);
          this.#queue.splice(0, batch.length);
        }
      } catch (err) {
        this.#log.error('audit write to Redis failed; kept in memory and retried', {
          error: toError(err).message,
          pending: this.#queue.length,
        });
        this.#retry ??= setTimeout(() => {
          this.#retry = null;
          void this.#drain();
        }, 1000);
      }
    };
    // Cleared in a later microtask: a run with nothing to write finishes synchronously, and
    // clearing inside it would be overwritten by this assignment.
    const writing = run().finally(() => {
      if (this.#writing === writing) this.#writing = null;
    });
    this.#writing = writing;
    return writing;
  }

  async #write(records: Record<string, string>[]): Promise<void> {
    const multi = this.#redis.multi();
    const perSecret = new Map<string, { counts: Map<string, number>; last: Record<string, string> }>();
    for (const r of records) {
      multi.xadd(auditStreamKey(this.#prefix), '*', ...Object.entries(r).flat());
      const secret = r.secret ?? '-';
      const agg = perSecret.get(secret) ?? { counts: new Map(), last: r };
      agg.counts.set(r.outcome ?? 'error', (agg.counts.get(r.outcome ?? 'error') ?? 0) + 1);
      if (Number(r.ts) >= Number(agg.last.ts)) agg.last = r;
      perSecret.set(secret, agg);
    }
    for (const [secret, { counts, last }] of perSecret) {
      const stats = secretStatsKey(this.#prefix, secret);
      for (const [outcome, n] of counts) multi.hincrby(stats, outcome, n);
      multi.hset(stats, 'lastAccessAt', last.ts ?? '0', ...(last.version ? ['lastVersion', last.version] : []));
    }
    const newest = records[records.length - 1];
    if (newest?.writer) multi.hset(auditHeadsKey(this.#prefix), newest.writer, `${newest.seq}:${newest.mac}`);
    const res = await multi.exec();
    const failed = res?.find(([err]) => err);
    if (!res || failed) throw failed?.[0] ?? new Error('transaction aborted');
  }

  get pending(): number {
    return this.#queue.length + this.#unsealed.length;
  }

  /** This writer's newest sealed record, for its own tail check. */
  get head(): ChainLink | null {
    return this.#chain?.head ?? null;
  }

  /** Waits for writes under way and tries once more to write anything pending. */
  async flush(): Promise<void> {
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
    await this.#writing;
    await this.#drain();
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
  }

  /**
   * Flushes and closes the sink. Records still waiting for the MAC key (it never became readable)
   * are written unsealed rather than lost: `fleet audit verify` reports them as such.
   */
  async close(): Promise<void> {
    if (this.#unsealed.length && !this.#chain) {
      this.#log.error(
        `the audit MAC key never became readable: ${this.#unsealed.length} record(s) are written without a MAC (verify will report them)`,
      );
      this.#seal(true);
    }
    await this.flush();
    await this.#sink?.close();
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
      const r = pairsToFields(fields);
      // Stored fields are whatever Redis holds (anyone with write access could put anything there):
      // an outcome that is none of ours is shown as an error with the reason, never passed on as is.
      const outcome = isOneOf(AUDIT_OUTCOMES, r.outcome) ? r.outcome : null;
      const rec: AuditRecord = {
        ts: Number(r.ts) || 0,
        outcome: outcome ?? 'error',
        secret: r.secret ?? '',
        jobId: r.jobId ?? '',
        jobType: r.jobType ?? '',
        workerId: r.workerId ?? '',
        provider: r.provider ?? '',
        latencyMs: Number(r.latencyMs) || 0,
        action: r.action ?? 'access',
        ...(r.version ? { version: r.version } : {}),
        ...(r.reason || !outcome
          ? {
              reason: outcome
                ? (r.reason ?? '')
                : `stored record has no valid outcome (${JSON.stringify(r.outcome ?? null).slice(0, 40)}): see fleet audit verify`,
            }
          : {}),
      };
      if (q.secret && rec.secret !== q.secret) continue;
      if (q.deniedOnly && rec.outcome !== 'denied') continue;
      out.push(rec);
      if (out.length >= limit) break;
    }
    if (page.length < 500) break;
    end = `(${page[page.length - 1]?.[0]}`;
  }
  return out;
}

export async function readSecretStats(
  redis: RedisClient,
  prefix: string,
  names: readonly string[],
): Promise<SecretStats[]> {
  return Promise.all(names.map((secret) => readSecretStat(redis, prefix, secret)));
}

export async function readSecretStat(redis: RedisClient, prefix: string, secret: string): Promise<SecretStats> {
  const h = await redis.hgetall(secretStatsKey(prefix, secret));
  return {
    secret,
    granted: Number(h.granted ?? 0),
    denied: Number(h.denied ?? 0),
    errors: Number(h.error ?? 0),
    lastAccessAt: h.lastAccessAt ? Number(h.lastAccessAt) : null,
    lastVersion: h.lastVersion ?? null,
  };
}

/** A stream entry's flat `[field, value, field, value, …]` as an object. */
function pairsToFields(flat: readonly string[]): Record<string, string> {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i] ?? ''] = flat[i + 1] ?? '';
  return fields;
}

/** A stream entry as XRANGE returns it, as an {@link AuditEntry}. */
export const toEntry = ([id, flat]: [string, string[]]): AuditEntry => ({ id, fields: pairsToFields(flat) });

/** Each writer's head (`seq:mac`) as Redis holds it. */
export async function readHeads(redis: RedisClient, prefix: string): Promise<Map<string, ChainLink>> {
  const raw = await redis.hgetall(auditHeadsKey(prefix));
  const out = new Map<string, ChainLink>();
  for (const [writer, v] of Object.entries(raw)) {
    if (writer.startsWith(':')) continue;
    const [seq, mac] = v.split(':');
    out.set(writer, { seq: Number(seq), mac: mac ?? '' });
  }
  return out;
}

/** Records in stream order from `start` (inclusive) to `end`, paged; at most `limit`. */
export async function readEntries(
  redis: RedisClient,
  prefix: string,
  start = '-',
  end = '+',
  limit = Infinity,
): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  let from = start;
  while (out.length < limit) {
    const page = await redis.xrange(auditStreamKey(prefix), from, end, 'COUNT', Math.min(1000, limit - out.length));
    out.push(...page.map(toEntry));
    if (page.length < 1000) break;
    from = `(${page[page.length - 1]?.[0]}`;
  }
  return out;
}

/** Verifies the audit stream (all of it, or the records since `sinceMs`, or the newest `tail`). */
export async function verifyAuditTrail(
  redis: RedisClient,
  prefix: string,
  keys: AuditKeyRing,
  window: { sinceMs?: number; tail?: number } = {},
): Promise<VerifyReport> {
  // Heads first: every record a head names was written with it, so the records read after cover them.
  const heads = await readHeads(redis, prefix);
  let entries: AuditEntry[];
  if (window.tail)
    entries = (await redis.xrevrange(auditStreamKey(prefix), '+', '-', 'COUNT', window.tail)).map(toEntry).reverse();
  else entries = await readEntries(redis, prefix, window.sinceMs ? `${window.sinceMs}-0` : '-');
  const anchored = window.tail !== undefined || window.sinceMs !== undefined;
  return verifyEntries(entries, keys, { mode: anchored ? 'anchored' : 'full', heads });
}

/**
 * An audit writer for one fleet component: the MAC key from the secret store, a chain of its own
 * (`writer`), and the export sink if configured. `createKey`: make the key if it does not exist and
 * this identity may (the local store on first start).
 */
export function openAuditLog(options: {
  redis: RedisClient;
  prefix: string;
  logger: Logger;
  provider: SecretProvider;
  audit: { macKey: string; export?: string | undefined };
  writer: string;
  createKey?: boolean;
}): { log: AuditLog; keys: Promise<AuditKeyRing>; stop: () => void } {
  const sink = options.audit.export ? openAuditSink(options.audit.export) : null;
  const log = new AuditLog({
    redis: options.redis,
    prefix: options.prefix,
    logger: options.logger,
    chain: 'pending',
    sink,
  });
  // The key is read in the background, retried while the store is unreachable (a supervisor starts
  // even when Vault is down, like its jobs' secrets); records wait for it, in order.
  let stopped = false;
  const keys = (async (): Promise<AuditKeyRing> => {
    for (let attempt = 0; ; attempt++) {
      try {
        const ring = await loadAuditKeys(options.provider, options.audit.macKey, { create: options.createKey ?? true });
        log.attach(new ChainWriter(options.writer, ring));
        return ring;
      } catch (err) {
        if (stopped) throw err;
        if (attempt === 0 || attempt % 30 === 0)
          options.logger.error('audit records wait for the audit MAC key', {
            error: toError(err).message,
            retryingEveryMs: 2000,
          });
        await new Promise((r) => setTimeout(r, 2000).unref());
        if (stopped) throw err;
      }
    }
  })();
  keys.catch(() => undefined);
  return { log, keys, stop: () => (stopped = true) };
}
