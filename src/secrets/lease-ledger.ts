/**
 * The ledger of job tokens that hold backend-minted credentials (Vault dynamic secrets), one Redis
 * hash shared by the supervisors: a supervisor notes a token before it mints the first credential
 * with it and drops the note once the token is revoked. A supervisor that dies mid-job leaves its
 * notes behind; the others revoke those tokens (and with them the credentials) when its heartbeat
 * goes stale, instead of waiting for the tokens' TTL.
 */
import { z } from 'zod';
import type { RedisClient } from '../redis/connection.js';
import { dynamicLeasesKey } from '../redis/keys.js';
import { toError } from '../errors.js';
import type { LeaseLedger } from './provider.js';

const entrySchema = z.object({
  owner: z.string(),
  jobId: z.string(),
  jobType: z.string(),
  expiresAt: z.number(),
});
export type LedgerEntry = z.infer<typeof entrySchema> & { accessor: string };

export class RedisLeaseLedger implements LeaseLedger {
  readonly #redis: RedisClient;
  readonly #key: string;
  /** The supervisor writing through this ledger. */
  readonly owner: string;

  constructor(redis: RedisClient, prefix: string, owner: string) {
    this.#redis = redis;
    this.#key = dynamicLeasesKey(prefix);
    this.owner = owner;
  }

  async hold(entry: { accessor: string; jobId: string; jobType: string; expiresAt: number }): Promise<void> {
    const { accessor, ...rest } = entry;
    await this.#redis.hset(this.#key, accessor, JSON.stringify({ owner: this.owner, ...rest }));
  }

  async drop(accessor: string): Promise<void> {
    await this.#redis.hdel(this.#key, accessor);
  }

  /** Every note (a note that is not one of ours, written by something else, is returned as `invalid`). */
  async entries(): Promise<{ entries: LedgerEntry[]; invalid: string[] }> {
    const raw = await this.#redis.hgetall(this.#key);
    const entries: LedgerEntry[] = [];
    const invalid: string[] = [];
    for (const [accessor, text] of Object.entries(raw)) {
      let parsed: ReturnType<typeof entrySchema.safeParse> | null = null;
      try {
        parsed = entrySchema.safeParse(JSON.parse(text));
      } catch {
        parsed = null;
      }
      if (parsed?.success) entries.push({ accessor, ...parsed.data });
      else invalid.push(accessor);
    }
    return { entries, invalid };
  }
}

/** What one sweep did. */
export interface SweepOutcome {
  revoked: LedgerEntry[];
  expired: LedgerEntry[];
  failed: { entry: LedgerEntry; error: string }[];
}

/**
 * Revokes the tokens that supervisors no longer alive left in the ledger (their credentials go with
 * them), and forgets notes whose tokens have expired anyway (Vault revoked their credentials then).
 * An unexpired note of a live supervisor is left alone: that supervisor revokes it itself.
 */
export async function sweepLedger(options: {
  ledger: RedisLeaseLedger;
  /** Ids of the supervisors whose heartbeats are current (this one included). */
  live: ReadonlySet<string>;
  revoke: (accessor: string) => Promise<void>;
  now?: number;
}): Promise<SweepOutcome> {
  const now = options.now ?? Date.now();
  const out: SweepOutcome = { revoked: [], expired: [], failed: [] };
  const { entries, invalid } = await options.ledger.entries();
  for (const accessor of invalid) await options.ledger.drop(accessor);
  for (const entry of entries) {
    if (entry.expiresAt < now) {
      await options.ledger.drop(entry.accessor);
      out.expired.push(entry);
      continue;
    }
    if (options.live.has(entry.owner) || entry.owner === options.ledger.owner) continue;
    try {
      await options.revoke(entry.accessor);
      await options.ledger.drop(entry.accessor);
      out.revoked.push(entry);
    } catch (err) {
      out.failed.push({ entry, error: toError(err).message });
    }
  }
  return out;
}

/**
 * One sweep as a supervisor runs it (at start and with each heartbeat): the live supervisors read
 * from their heartbeats, each revocation audited, the count reported.
 */
export async function sweepOrphanedTokens(options: {
  ledger: RedisLeaseLedger;
  liveSupervisors: () => Promise<ReadonlySet<string>>;
  revoke: (accessor: string) => Promise<void>;
  audit: (entry: LedgerEntry, error?: string) => void;
}): Promise<SweepOutcome> {
  const out = await sweepLedger({
    ledger: options.ledger,
    live: await options.liveSupervisors(),
    revoke: options.revoke,
  });
  for (const e of out.revoked) options.audit(e);
  for (const f of out.failed) options.audit(f.entry, f.error);
  return out;
}
