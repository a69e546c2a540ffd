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

/**
 * What Vault says about a token the ledger names (its metadata, set by the supervisor that minted
 * it, cannot be written through Redis): a fleet job token and whose it is, a token that is not a
 * fleet job token, or none (expired or revoked).
 */
export type TokenInfo = { fleet: true; supervisor: string; jobId: string; jobType: string } | { fleet: false } | null;

/** What one sweep did. */
export interface SweepOutcome {
  revoked: LedgerEntry[];
  /** Notes of tokens Vault no longer knows (expired: their credentials went with them), forgotten. */
  expired: string[];
  /** Notes naming a token that is not a fleet job token: forgotten, the token left alone. */
  foreign: string[];
  failed: { entry: LedgerEntry; error: string }[];
}

/**
 * Revokes the job tokens that supervisors no longer alive left in the ledger (their dynamic
 * credentials go with them). The ledger lives in Redis, where the `worker` role may write, so a
 * note only points at a token: whose token it is and for which job is read from Vault's own
 * metadata of that token, and only a fleet job token (minted through the job role, with a job
 * type's policy) of a supervisor whose heartbeat has stopped is revoked. A note can therefore not
 * get a live supervisor's token, or any other token, revoked; a forged note or heartbeat can at
 * worst hide an orphan, whose credentials then end with its token's TTL.
 */
export async function sweepLedger(options: {
  ledger: RedisLeaseLedger;
  /** Ids of the supervisors whose heartbeats are current (this one included). */
  live: ReadonlySet<string>;
  inspect: (accessor: string) => Promise<TokenInfo>;
  revoke: (accessor: string) => Promise<void>;
}): Promise<SweepOutcome> {
  const out: SweepOutcome = { revoked: [], expired: [], foreign: [], failed: [] };
  const { entries, invalid } = await options.ledger.entries();
  const suspects = [
    ...invalid,
    // A note whose owner is live is that supervisor's to end (a forged owner only hides a note).
    ...entries.filter((e) => !options.live.has(e.owner) && e.owner !== options.ledger.owner).map((e) => e.accessor),
  ];
  for (const accessor of suspects) {
    let info: TokenInfo;
    try {
      info = await options.inspect(accessor);
    } catch (err) {
      out.failed.push({
        entry: { accessor, owner: '?', jobId: '?', jobType: '?', expiresAt: 0 },
        error: toError(err).message,
      });
      continue;
    }
    if (info === null) {
      await options.ledger.drop(accessor);
      out.expired.push(accessor);
      continue;
    }
    if (!info.fleet) {
      await options.ledger.drop(accessor);
      out.foreign.push(accessor);
      continue;
    }
    if (options.live.has(info.supervisor)) continue;
    const entry: LedgerEntry = {
      accessor,
      owner: info.supervisor,
      jobId: info.jobId,
      jobType: info.jobType,
      expiresAt: 0,
    };
    try {
      await options.revoke(accessor);
      await options.ledger.drop(accessor);
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
  inspect: (accessor: string) => Promise<TokenInfo>;
  revoke: (accessor: string) => Promise<void>;
  audit: (entry: LedgerEntry, error?: string) => void;
}): Promise<SweepOutcome> {
  const out = await sweepLedger({
    ledger: options.ledger,
    live: await options.liveSupervisors(),
    inspect: options.inspect,
    revoke: options.revoke,
  });
  for (const e of out.revoked) options.audit(e);
  for (const f of out.failed) options.audit(f.entry, f.error);
  return out;
}
