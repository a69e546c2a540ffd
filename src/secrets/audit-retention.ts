/**
 * Audit retention: the scheduler's periodic trim of the audit stream to `secrets.audit.maxEntries`,
 * behind a signed checkpoint, over the `retention` Redis role (the only one that may trim). A
 * segment whose chain does not verify is left in place and reported.
 */
import { randomUUID } from 'node:crypto';
import type { FleetConfig } from '../config/resolve.js';
import { toError } from '../errors.js';
import type { FleetEventBus } from '../events.js';
import type { Logger } from '../observability/logger.js';
import { connectRedis, type RedisClient } from '../redis/connection.js';
import { auditHeadsKey, auditStreamKey } from '../redis/keys.js';
import {
  ChainWriter,
  compareIds,
  decodeChains,
  decodeCounts,
  encodeChains,
  verifyEntries,
  type AuditEntry,
  type AuditKeyRing,
  type ChainLink,
  type VerifyReport,
} from './audit-chain.js';
import { readEntries, toEntry } from './audit.js';

/** Where the latest checkpoint sits, kept in the heads hash (a locator only: the checkpoint itself is signed). */
const CHECKPOINT_FIELD = ':checkpoint';

/** The signed checkpoint that covers the stream's head (the one with the largest cut at or before `firstId`). */
async function findCheckpoint(
  redis: RedisClient,
  prefix: string,
  firstId: string,
): Promise<{ chains: Map<string, ChainLink>; fields: Record<string, string> } | null> {
  const usable = (
    e: AuditEntry | undefined,
  ): { chains: Map<string, ChainLink>; fields: Record<string, string> } | null => {
    if (!e || e.fields.action !== 'checkpoint' || !e.fields.cut || compareIds(e.fields.cut, firstId) > 0) return null;
    const chains = decodeChains(e.fields.chains);
    return chains ? { chains, fields: e.fields } : null;
  };
  const locator = await redis.hget(auditHeadsKey(prefix), CHECKPOINT_FIELD);
  if (locator) {
    const [hit] = (await redis.xrange(auditStreamKey(prefix), locator, locator)).map(toEntry);
    const chains = usable(hit);
    if (chains) return chains;
  }
  // No locator (or a stale one): look through the stream, newest first.
  let end = '+';
  for (;;) {
    const page = (await redis.xrevrange(auditStreamKey(prefix), end, '-', 'COUNT', 1000)).map(toEntry);
    for (const e of page) {
      const chains = usable(e);
      if (chains) return chains;
    }
    if (page.length < 1000) return null;
    end = `(${page[page.length - 1]?.id}`;
  }
}

/**
 * The retention path (the `retention` Redis role, run by the scheduler): when the stream holds
 * more than `maxEntries` (+10%), verifies the oldest records from the last checkpoint on, writes a
 * signed checkpoint with every chain's state at the cut, and trims the records before the cut in
 * the same MULTI. A segment that does not verify is not trimmed (trimming it would launder the
 * tampering): the caller reports the break instead.
 */
export async function trimAuditWithCheckpoint(
  redis: RedisClient,
  prefix: string,
  options: { maxEntries: number; chain: ChainWriter; keys: AuditKeyRing },
): Promise<{ trimmed: number; checkpoint: string | null; report: VerifyReport | null }> {
  const length = await redis.xlen(auditStreamKey(prefix));
  if (length <= Math.ceil(options.maxEntries * 1.1)) return { trimmed: 0, checkpoint: null, report: null };
  const drop = length - options.maxEntries;
  const entries = await readEntries(redis, prefix, '-', '+', drop + 1);
  const segment = entries.slice(0, drop);
  const cut = entries[drop]?.id;
  const firstId = segment[0]?.id;
  if (!cut || !firstId) return { trimmed: 0, checkpoint: null, report: null };
  const previous = await findCheckpoint(redis, prefix, firstId);
  const start = previous?.chains;
  const report = await verifyEntries(segment, options.keys, { mode: 'full', ...(start ? { start } : {}) });
  if (!report.ok) return { trimmed: 0, checkpoint: null, report };
  // Running totals of what retention dropped, carried from checkpoint to checkpoint: the security
  // records (denied outcomes) by action, so a flood that pushes evidence out still leaves its count.
  const denied: Record<string, number> = { ...decodeCounts(previous?.fields.trimmedDenied) };
  for (const e of segment)
    if (e.fields.outcome === 'denied') {
      const action = e.fields.action ?? 'unknown';
      denied[action] = (denied[action] ?? 0) + 1;
    }
  const trimmedTotal = Number(previous?.fields.trimmedTotal ?? 0) + segment.length;
  const sealed = options.chain.seal({
    ts: String(Date.now()),
    outcome: 'granted',
    action: 'checkpoint',
    secret: '-',
    jobId: '-',
    jobType: '-',
    workerId: options.chain.writer,
    provider: 'audit',
    latencyMs: '0',
    cut,
    trimmed: String(segment.length),
    trimmedTotal: String(trimmedTotal),
    trimmedDenied: JSON.stringify(denied),
    chains: encodeChains(report.state),
  });
  const res = await redis
    .multi()
    .xadd(auditStreamKey(prefix), '*', ...Object.entries(sealed).flat())
    .xtrim(auditStreamKey(prefix), 'MINID', cut)
    .hset(auditHeadsKey(prefix), options.chain.writer, `${sealed.seq}:${sealed.mac}`)
    .exec();
  const failed = res?.find(([err]) => err);
  if (!res || failed) throw failed?.[0] ?? new Error('checkpoint transaction aborted');
  const [[, added], [, trimmed]] = [res[0] ?? [], res[1] ?? []];
  const checkpoint = String(added);
  await redis.hset(auditHeadsKey(prefix), CHECKPOINT_FIELD, checkpoint);
  return { trimmed: Number(trimmed), checkpoint, report };
}

export interface TrimOutcome {
  trimmed: number;
  checkpoint: string | null;
  ok: boolean;
}

export class AuditRetention {
  readonly #config: FleetConfig;
  readonly #events: FleetEventBus;
  readonly #log: Logger;
  /** The writer name of this scheduler's retention chain. */
  readonly #writer: string;
  readonly #redis: RedisClient;
  readonly #timer: NodeJS.Timeout;
  #keys: AuditKeyRing | null = null;
  #chain: ChainWriter | null = null;
  #run: Promise<unknown> = Promise.resolve();

  /** Connects (as `redisUrl`'s user) and trims every `secrets.audit.retentionEveryMs` once the keys are given. */
  constructor(options: { config: FleetConfig; redisUrl: string; events: FleetEventBus; log: Logger; writer: string }) {
    this.#config = options.config;
    this.#events = options.events;
    this.#log = options.log;
    this.#writer = options.writer;
    this.#redis = connectRedis(options.redisUrl, 'worker', { tls: options.config.redis.tls });
    this.#redis.on('error', (err) =>
      this.#log.warn('redis error (audit retention); reconnecting', { error: err.message }),
    );
    this.#timer = setInterval(() => void this.trim(), options.config.secrets.audit.retentionEveryMs);
    this.#timer.unref();
  }

  /** The audit keys, once loaded: checkpoints are sealed with them (no trim runs before). */
  useKeys(keys: AuditKeyRing): void {
    this.#keys = keys;
    this.#chain = new ChainWriter(this.#writer, keys);
  }

  /** One trim; passes run one after another (the chain's records must be sealed and written in order). */
  trim(): Promise<TrimOutcome | null> {
    const run = this.#run.then(() => this.#trim());
    this.#run = run.catch(() => undefined);
    return run;
  }

  async #trim(): Promise<TrimOutcome | null> {
    const chain = this.#chain;
    if (!this.#keys || !chain) return null;
    try {
      const r = await trimAuditWithCheckpoint(this.#redis, this.#config.redis.prefix, {
        maxEntries: this.#config.secrets.audit.maxEntries,
        chain,
        keys: this.#keys,
      });
      if (r.report)
        this.#events.emit('audit:verified', {
          by: 'retention',
          ok: r.report.ok,
          records: r.report.records,
          firstBreak: r.report.firstBreak,
        });
      if (r.report && !r.report.ok)
        this.#log.error('audit retention refused to trim: the records it would drop do not verify', {
          firstBreak: r.report.firstBreak,
        });
      else if (r.trimmed)
        this.#log.info(`audit retention: trimmed ${r.trimmed} records behind checkpoint ${r.checkpoint}`);
      return { trimmed: r.trimmed, checkpoint: r.checkpoint, ok: r.report?.ok ?? true };
    } catch (err) {
      this.#log.warn('audit retention could not run', { error: toError(err).message });
      // A checkpoint may have been sealed but not written: continue on a fresh chain, so the
      // next one does not leave a gap in this one (its head in Redis stays at its last record).
      this.#chain = new ChainWriter(`${this.#writer}-${randomUUID().slice(0, 4)}`, this.#keys);
      return null;
    }
  }

  /** Stops the timer, lets a running trim finish, and disconnects. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#run;
    this.#redis.disconnect();
  }
}
