import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import type { SecretProvider, SecretValue } from './provider.js';
import { utf8Bytes } from '../bytes.js';
import { SecretUnavailableError, errorMessage } from '../errors.js';

/**
 * The audit trail's tamper evidence: a MAC chain per writer.
 *
 * Every writer (one supervisor or rotation service, from its start to its stop) numbers its
 * records 1, 2, 3 … and seals each with `mac = HMAC-SHA256(key, canonical(record))`, where the
 * record includes `writer`, `seq`, `prev` (the MAC of the writer's previous record; `genesis`
 * for the first) and `kv` (the version of the MAC key). The key lives in the secret store, never
 * in Redis, so whoever can write Redis cannot produce a valid MAC.
 *
 * Why one chain per writer: several supervisors append at once, and no writer knows the record
 * another writes next, so a single global chain would need a lock across the fleet on every
 * write. Per writer, the order is the writer's own (it sends its records one transaction at a
 * time, in order, on one connection), so a verifier can demand, writer by writer and in stream
 * order: seq rises by exactly one, `prev` is the previous MAC, and the MAC is right. Then:
 * - an edited field, an inserted record (no valid MAC without the key) → wrong MAC;
 * - a deleted record → a gap in its writer's seq (and a `prev` that does not match);
 * - a reordered record (a stream is append-only: reordering is delete + re-add at the end) →
 *   its seq comes after a higher one;
 * - a replayed record → a repeated seq;
 * - a truncated tail → the chain ends before the writer's head (`{audit}` heads hash, written in
 *   the same MULTI as the records), and the live writer itself notices that its own head moved;
 * - trimmed head → the first record does not start at seq 1 and no signed checkpoint covers it.
 */

export const GENESIS = 'genesis';

/** The bytes a MAC covers: every field but `mac`, sorted by name, as JSON `[[name, value], …]`. */
export function canonical(fields: Readonly<Record<string, string>>): string {
  return JSON.stringify(
    Object.keys(fields)
      .filter((k) => k !== 'mac')
      .sort()
      .map((k) => [k, fields[k]]),
  );
}

export function macOf(key: Uint8Array, fields: Readonly<Record<string, string>>): string {
  return createHmac('sha256', key).update(canonical(fields)).digest('hex');
}

function sameMac(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

/** The audit MAC key: the version writers use now, and any version a verifier meets. */
export class AuditKeyRing {
  readonly #keys = new Map<string, Uint8Array>();
  constructor(
    readonly current: { version: string; key: Uint8Array },
    readonly loadVersion: (version: string) => Promise<SecretValue> = () =>
      Promise.reject(new Error('no other key versions')),
  ) {
    this.#keys.set(current.version, current.key);
  }

  async get(version: string): Promise<Uint8Array | null> {
    const known = this.#keys.get(version);
    if (known) return known;
    try {
      const v = await this.loadVersion(version);
      this.#keys.set(version, v.value);
      return v.value;
    } catch {
      return null;
    }
  }

  /** Zero-fills every key held (at stop). */
  discard(): void {
    for (const k of this.#keys.values()) k.fill(0);
    this.#keys.clear();
  }
}

/**
 * Reads the audit MAC key with the provider's own identity; creates it (32 random bytes) when it
 * does not exist yet and `create` is allowed and the identity may write it.
 */
export async function loadAuditKeys(
  provider: SecretProvider,
  name: string,
  options: { create: boolean },
): Promise<AuditKeyRing> {
  let current: SecretValue;
  try {
    current = await provider.readCurrent(name);
  } catch (err) {
    if (!(err instanceof SecretUnavailableError && err.code === 'SECRET_NOT_FOUND') || !options.create) {
      throw new SecretUnavailableError(
        err instanceof SecretUnavailableError ? err.code : 'SECRET_NOT_FOUND',
        `the audit MAC key "${name}" cannot be read from the ${provider.kind} provider (${errorMessage(err)}). Fix: run \`fleet audit init-key\` (or \`fleet vault setup\`), and let this identity read it (secrets.audit.macKey).`,
        { cause: err },
      );
    }
    // Text (hex), because some stores keep values as UTF-8 strings.
    const fresh = utf8Bytes(randomBytes(32).toString('hex'));
    try {
      await provider.write(name, fresh);
    } catch (writeErr) {
      throw new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `the audit MAC key "${name}" does not exist in the ${provider.kind} provider and this identity may not create it (${errorMessage(writeErr)}). Fix: run \`fleet audit init-key\` once with an identity that may write secrets (or \`fleet vault setup\`).`,
        { cause: writeErr },
      );
    } finally {
      fresh.fill(0);
    }
    current = await provider.readCurrent(name);
  }
  return new AuditKeyRing({ version: current.version, key: current.value }, (v) => provider.readVersion(name, v));
}

export interface ChainLink {
  seq: number;
  mac: string;
}

/** Seals one writer's records in order. */
export class ChainWriter {
  #seq = 0;
  #prev = GENESIS;
  constructor(
    readonly writer: string,
    readonly keys: AuditKeyRing,
  ) {}

  seal(fields: Record<string, string>): Record<string, string> {
    const sealed: Record<string, string> = {
      ...fields,
      writer: this.writer,
      seq: String(++this.#seq),
      prev: this.#prev,
      kv: this.keys.current.version,
    };
    sealed.mac = macOf(this.keys.current.key, sealed);
    this.#prev = sealed.mac;
    return sealed;
  }

  get head(): ChainLink {
    return { seq: this.#seq, mac: this.#prev };
  }
}

export interface AuditEntry {
  /** Stream id (absent for records read from an export file). */
  id?: string;
  fields: Record<string, string>;
}

export interface ChainBreak {
  /** Stream id (or line number of an export) of the first record that does not verify. */
  at: string;
  writer: string;
  reason: string;
}

export interface VerifyReport {
  ok: boolean;
  records: number;
  writers: number;
  /** The first broken link, in stream order. */
  firstBreak: ChainBreak | null;
  breaks: number;
  /** The checkpoint the verification started from (after a retention trim). */
  checkpoint: string | null;
  /**
   * What retention trimmed before that checkpoint, from its signed fields: records in all, and
   * the security records among them (`denied` outcomes) by action, so a flood that pushed
   * evidence out is still seen. Null without a checkpoint (or one written before these counts).
   */
  trimmed: { records: number; denied: Record<string, number> } | null;
  /** Chain state at the end: each writer's last seq and MAC. */
  state: Map<string, ChainLink>;
}

/** A checkpoint record's `chains` field: the state of every chain at the cut. */
export function encodeChains(state: ReadonlyMap<string, ChainLink>): string {
  return JSON.stringify(Object.fromEntries([...state].map(([w, l]) => [w, [l.seq, l.mac]])));
}

const chainsSchema = z.record(z.string(), z.tuple([z.number().int().min(0), z.string()]));

/** A checkpoint's `chains`, validated (a malformed one is no checkpoint: verification then fails at the stream's head). */
export function decodeChains(text: string | undefined): Map<string, ChainLink> | null {
  if (!text) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return null;
  }
  const r = chainsSchema.safeParse(parsed);
  return r.success ? new Map(Object.entries(r.data).map(([w, [seq, mac]]) => [w, { seq, mac }])) : null;
}

const countsSchema = z.record(z.string(), z.number().int().min(0));

/** A checkpoint's `trimmedDenied` field (denied records trimmed so far, by action). */
export function decodeCounts(text: string | undefined): Record<string, number> | null {
  if (!text) return null;
  try {
    const r = countsSchema.safeParse(JSON.parse(text));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

/** Stream ids compare as (ms, seq). */
export function compareIds(a: string, b: string): number {
  const [am = 0, as = 0] = a.split('-').map(Number);
  const [bm = 0, bs = 0] = b.split('-').map(Number);
  return am - bm || as - bs;
}

export interface VerifyOptions {
  /**
   * `anchored`: the first record of each writer is taken as given (its MAC is checked, not its
   * link): for a window of the stream (`--since`, the supervisors' tail check). `full`: chains
   * must start at seq 1 or at a signed checkpoint.
   */
  mode: 'full' | 'anchored';
  /** Chain state to start from (a retention pass continues from the last checkpoint). */
  start?: ReadonlyMap<string, ChainLink>;
  /** Each writer's head as Redis holds it, read before the records. */
  heads?: ReadonlyMap<string, ChainLink>;
}

/** Verifies records in stream order. */
export async function verifyEntries(
  entries: readonly AuditEntry[],
  keys: AuditKeyRing,
  options: VerifyOptions,
): Promise<VerifyReport> {
  const state = new Map<string, ChainLink>(options.start ?? []);
  let firstBreak: ChainBreak | null = null;
  let breaks = 0;
  const fail = (at: string, writer: string, reason: string): void => {
    breaks++;
    firstBreak ??= { at, writer, reason };
  };
  let checkpoint: string | null = null;
  let trimmed: VerifyReport['trimmed'] = null;
  if (options.mode === 'full' && !options.start && entries.length) {
    // The checkpoint that covers the stream's head: the one with the largest cut at or before the
    // first record still there (its MAC is checked below, as part of its writer's chain).
    const first = entries[0]?.id;
    let best: { cut: string; id: string; chains: Map<string, ChainLink>; fields: Record<string, string> } | null = null;
    for (const e of entries) {
      if (e.fields.action !== 'checkpoint' || !e.fields.cut || !e.id) continue;
      const chains = decodeChains(e.fields.chains);
      if (chains && first && compareIds(e.fields.cut, first) <= 0 && (!best || compareIds(e.fields.cut, best.cut) > 0))
        best = { cut: e.fields.cut, id: e.id, chains, fields: e.fields };
    }
    if (best) {
      checkpoint = best.id;
      for (const [w, l] of best.chains) state.set(w, l);
      const denied = decodeCounts(best.fields.trimmedDenied);
      if (denied) trimmed = { records: Number(best.fields.trimmedTotal ?? best.fields.trimmed ?? 0), denied };
    }
  }
  // MACs first (they may need other key versions, each loaded once), then one pass in stream order.
  const macProblem: (string | null)[] = [];
  for (const e of entries) {
    const f = e.fields;
    if (!f.mac || !f.kv) {
      macProblem.push(null);
      continue;
    }
    const key = await keys.get(f.kv);
    if (!key) macProblem.push(`MAC key version ${f.kv} cannot be read, so this record cannot be verified`);
    else macProblem.push(sameMac(macOf(key, f), f.mac) ? null : 'MAC does not match: the record was edited or forged');
  }
  const heads = new Map<string, ChainLink>(options.heads ?? []);
  entries.forEach((e, index) => {
    const at = e.id ?? `line ${index + 1}`;
    const f = e.fields;
    const writer = f.writer ?? '';
    if (!f.mac || !writer || !f.seq || !f.prev || !f.kv) {
      fail(
        at,
        writer || '(none)',
        'record has no MAC chain fields (writer, seq, prev, kv, mac): inserted by something other than a fleet writer',
      );
      return;
    }
    const bad = macProblem[index];
    if (bad) fail(at, writer, bad);
    const seq = Number(f.seq);
    const last = state.get(writer);
    const anchoring = !last && options.mode === 'anchored';
    if (!anchoring) {
      const expectedSeq = (last?.seq ?? 0) + 1;
      const expectedPrev = last?.mac ?? GENESIS;
      if (seq < expectedSeq)
        fail(at, writer, `seq ${seq} after seq ${expectedSeq - 1}: a record was reordered or replayed`);
      else if (seq > expectedSeq)
        fail(
          at,
          writer,
          `seq ${seq} follows seq ${expectedSeq - 1}: ${seq - expectedSeq} record(s) of this writer are missing before it${last ? '' : ' (trimmed without a checkpoint, or deleted)'}`,
        );
      else if (!sameMac(f.prev, expectedPrev))
        fail(at, writer, 'prev does not match the MAC of the previous record: the chain was rewritten');
    }
    state.set(writer, { seq, mac: f.mac });
    const head = heads.get(writer);
    if (head && head.seq === seq && !sameMac(head.mac, f.mac))
      fail(at, writer, `record seq ${seq} differs from the writer's head in Redis`);
  });
  for (const [writer, head] of options.heads ?? []) {
    const got = state.get(writer);
    if (!got && options.mode === 'anchored') continue;
    if (!got || got.seq < head.seq)
      fail(
        `end`,
        writer,
        `the chain ends at seq ${got?.seq ?? 0} but the writer's head is seq ${head.seq}: the newest ${head.seq - (got?.seq ?? 0)} record(s) were removed`,
      );
  }
  return {
    ok: breaks === 0,
    records: entries.length,
    writers: new Set(entries.map((e) => e.fields.writer)).size,
    firstBreak,
    breaks,
    checkpoint,
    trimmed,
    state,
  };
}
