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
import { ChainWriter, type AuditKeyRing } from './audit-chain.js';
import { trimAuditWithCheckpoint } from './audit.js';

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
