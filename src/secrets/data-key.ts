import { randomBytes } from 'node:crypto';
import { utf8Bytes } from '../bytes.js';
import {
  DataKeyRetiredError,
  DataKeyUnavailableError,
  FleetError,
  SecretUnavailableError,
  errorMessage,
} from '../errors.js';
import type { SecretProvider, SecretValue } from './provider.js';
import {
  deriveDataKey,
  envelopeVersion,
  openText,
  openValue,
  sealValue,
  sealText,
  sealedEnvelope,
  notSealed,
  type DataKey,
  type SealContext,
  type SealedValue,
} from './job-data-seal.js';

export interface DataKeyRingOptions {
  /** The store holding the data key (`secrets.dataKey.name`), opened with this component's own identity. */
  provider: SecretProvider;
  /** The secret's name. */
  name: string;
  /** How often the current version is looked up again (a rotation reaches sealing within this). */
  refreshMs: number;
  /** Create the key (a random 32 bytes, as 64 hex characters) when the store has none and this identity may write it. */
  create: boolean;
  /** @defaultValue Date.now */
  now?: () => number;
}

/**
 * The fleet's data key for job data at rest: the version new data is sealed under (looked up again
 * every `refreshMs`, never per job) and every older version met while opening, each loaded once
 * from the store and kept in memory, so sealing and opening cost no store call (no KMS `Decrypt`,
 * no Vault read) per job. A version the store no longer has (retired after its rotation's grace
 * window) fails with `DATA_KEY_RETIRED`; an unreachable store with `DATA_KEY_UNAVAILABLE` (retryable).
 */
export class DataKeyRing {
  readonly #o: DataKeyRingOptions;
  readonly #now: () => number;
  readonly #versions = new Map<string, DataKey>();
  #current: { key: DataKey; checkedAt: number } | null = null;
  #refreshing: Promise<DataKey> | null = null;
  /** Whether `list()` works for this identity (a Vault supervisor may read but not list). */
  #canList = true;
  /** Set by discard(): the keys held were zero-filled in place, and none is loaded again. */
  #discarded = false;

  constructor(options: DataKeyRingOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  get name(): string {
    return this.#o.name;
  }

  /** The version new data is sealed under. */
  async current(): Promise<DataKey> {
    const cur = this.#current;
    if (cur && this.#now() - cur.checkedAt < this.#o.refreshMs) return cur.key;
    this.#refreshing ??= this.#refresh().finally(() => (this.#refreshing = null));
    try {
      return await this.#refreshing;
    } catch (err) {
      // A store that is down for a moment does not stop sealing with the version already held:
      // it stays readable for its grace window after a rotation.
      if (cur) return cur.key;
      throw err;
    }
  }

  async #refresh(): Promise<DataKey> {
    let version: string | null = null;
    if (this.#canList) {
      try {
        version = (await this.#o.provider.list()).find((m) => m.name === this.#o.name)?.version ?? null;
      } catch {
        this.#canList = false;
      }
    }
    const known = version === null ? undefined : this.#versions.get(version);
    const key = known ?? this.#keep(await this.#readCurrent(version));
    this.#current = { key, checkedAt: this.#now() };
    return key;
  }

  async #readCurrent(listed: string | null): Promise<SecretValue> {
    const { provider, name } = this.#o;
    try {
      return listed === null ? await provider.readCurrent(name) : await provider.readVersion(name, listed);
    } catch (err) {
      if (!(err instanceof SecretUnavailableError && err.code === 'SECRET_NOT_FOUND') || !this.#o.create)
        throw unavailable(provider.kind, name, err);
    }
    const fresh = utf8Bytes(randomBytes(32).toString('hex'));
    try {
      await provider.write(name, fresh);
    } catch (err) {
      throw new DataKeyUnavailableError(
        `the data key "${name}" does not exist in the ${provider.kind} store and this identity may not create it (${errorMessage(err)}). Fix: start the scheduler once (it creates it), or run \`fleet vault setup\` (Vault).`,
        { cause: err, retryable: true },
      );
    } finally {
      fresh.fill(0);
    }
    return provider.readCurrent(name).catch((err: unknown) => {
      throw unavailable(provider.kind, name, err);
    });
  }

  #keep(v: SecretValue): DataKey {
    // A version read while discard() ran is not kept (nothing would zero-fill it).
    if (this.#discarded) v.value.fill(0);
    this.#refuseDiscarded();
    try {
      const key = deriveDataKey(v.version, v.value);
      this.#versions.set(v.version, key);
      return key;
    } catch (err) {
      throw new DataKeyUnavailableError(`the data key "${this.#o.name}" v${v.version}: ${errorMessage(err)}`, {
        retryable: false,
      });
    } finally {
      v.value.fill(0);
    }
  }

  /** A given version, for opening what was sealed under it. */
  async version(version: string): Promise<DataKey> {
    const known = this.#versions.get(version);
    if (known) return known;
    const { provider, name } = this.#o;
    let v: SecretValue;
    try {
      v = await provider.readVersion(name, version);
    } catch (err) {
      if (err instanceof SecretUnavailableError && err.code === 'SECRET_NOT_FOUND')
        throw new DataKeyRetiredError(
          `data key "${name}" v${version} is no longer in the ${provider.kind} store (retired after its rotation's grace window), so data sealed under it cannot be opened. Fix: keep graceSeconds of the data key's rotation above the longest a job waits in its queue.`,
          { cause: err },
        );
      throw unavailable(provider.kind, name, err);
    }
    return this.#keep(v);
  }

  /**
   * A key as the await for it resolved: discard() may have zero-filled it in place meanwhile, and
   * sealing under it would seal under 32 zero bytes (labelled with the real version).
   */
  #live(key: DataKey): DataKey {
    this.#refuseDiscarded();
    return key;
  }

  #refuseDiscarded(): void {
    if (this.#discarded)
      throw new DataKeyUnavailableError(
        `the data key "${this.#o.name}" was discarded (its producer or supervisor is closing), so nothing is sealed or opened with it. Fix: seal and open through a producer or supervisor that is running; a job is retried by another supervisor.`,
        { retryable: true },
      );
  }

  /** Seals a JSON value for BullMQ's `data`, `returnvalue` or `progress`. */
  async seal(ctx: SealContext, value: unknown): Promise<SealedValue> {
    this.#refuseDiscarded();
    return sealValue(this.#live(await this.current()), ctx, value);
  }

  /** Seals text (a failure reason, a log line). */
  async sealText(ctx: SealContext, text: string): Promise<string> {
    this.#refuseDiscarded();
    return sealText(this.#live(await this.current()), ctx, text);
  }

  /** Opens a value stored by {@link seal}. */
  async open(ctx: SealContext, stored: unknown): Promise<unknown> {
    const env = sealedEnvelope(stored);
    const version = env === null ? null : envelopeVersion(env);
    if (version === null) throw notSealed(ctx);
    this.#refuseDiscarded();
    return openValue(this.#live(await this.version(version)), ctx, stored);
  }

  /** Opens text sealed by {@link sealText}. */
  async openText(ctx: SealContext, envelope: string): Promise<string> {
    const version = envelopeVersion(envelope);
    if (version === null) throw notSealed(ctx);
    this.#refuseDiscarded();
    return openText(this.#live(await this.version(version)), ctx, envelope);
  }

  /**
   * Zero-fills every key held. Final: a seal or open still waiting for its key, and any later one,
   * is refused with DATA_KEY_UNAVAILABLE.
   */
  discard(): void {
    this.#discarded = true;
    for (const k of this.#versions.values()) k.key.fill(0);
    this.#versions.clear();
    this.#current = null;
  }
}

function unavailable(kind: string, name: string, err: unknown): FleetError {
  return new DataKeyUnavailableError(
    `the data key "${name}" cannot be read from the ${kind} store (${errorMessage(err)}). Fix: check that store is reachable and that this component's identity may read "${name}" (secrets.dataKey).`,
    {
      cause: err,
      // A key not created yet may be by the next try (the scheduler creates it at its start).
      retryable: !(err instanceof SecretUnavailableError) || err.retryable || err.code === 'SECRET_NOT_FOUND',
    },
  );
}
