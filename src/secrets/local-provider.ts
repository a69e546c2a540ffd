import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError, SecretUnavailableError } from '../errors.js';
import { seal, unseal } from './crypto.js';
import { declaredLease } from './lease.js';
import type { LeaseRequest, SecretLease, SecretMetadata, SecretProvider, SecretValue } from './provider.js';

export interface LocalProviderOptions {
  /** Encrypted store file. */
  file: string;
  /** Master key file, generated (mode 0600) when absent and no env key is set. */
  keyFile: string;
  /** Env var holding a base64 32-byte master key; wins over the key file. */
  masterKeyEnv: string;
  /** Versions kept per secret (older ones are dropped). */
  keepVersions: number;
}

const storeSchema = z.object({
  format: z.literal(1),
  secrets: z.record(
    z.string(),
    z.object({
      current: z.number(),
      versions: z.array(
        z.object({ version: z.number(), createdAt: z.number(), iv: z.string(), tag: z.string(), ct: z.string() }),
      ),
    }),
  ),
});
type Store = z.infer<typeof storeSchema>;

/**
 * DEV ONLY: secrets in an AES-256-GCM encrypted file, for `npm start` with nothing installed.
 * Real crypto (each value sealed with its name and version as AAD), but the master key sits on the
 * same disk. Use `vault` or `kms` in production; `fleet doctor` flags `local`.
 */
export class LocalProvider implements SecretProvider {
  readonly kind = 'local' as const;
  readonly #o: LocalProviderOptions;
  #key: Buffer | null = null;
  /** Parsed store, reused while the file's mtime and size are unchanged (rotation writes a new file). */
  #cache: { mtimeMs: number; size: number; store: Store } | null = null;

  constructor(options: LocalProviderOptions) {
    this.#o = options;
  }

  #masterKey(): Buffer {
    if (this.#key) return this.#key;
    const fromEnv = process.env[this.#o.masterKeyEnv];
    let key: Buffer;
    if (fromEnv) {
      key = Buffer.from(fromEnv, 'base64');
      if (key.length !== 32)
        throw new ConfigError(
          `${this.#o.masterKeyEnv} must be 32 bytes, base64-encoded (got ${key.length}). Fix: openssl rand -base64 32`,
        );
    } else {
      if (!existsSync(this.#o.keyFile)) {
        mkdirSync(path.dirname(this.#o.keyFile), { recursive: true });
        writeFileSync(this.#o.keyFile, randomBytes(32).toString('base64'), { mode: 0o600, flag: 'wx' });
      }
      const mode = statSync(this.#o.keyFile).mode & 0o777;
      if (mode & 0o077) chmodSync(this.#o.keyFile, 0o600);
      key = Buffer.from(readFileSync(this.#o.keyFile, 'utf8').trim(), 'base64');
      if (key.length !== 32)
        throw new ConfigError(
          `master key file ${this.#o.keyFile} is not a base64 32-byte key. Fix: delete it to generate a new one (existing secrets become unreadable) or restore it.`,
        );
    }
    this.#key = key;
    return key;
  }

  #load(): Store {
    const st = statSync(this.#o.file, { throwIfNoEntry: false });
    if (!st) return { format: 1, secrets: {} };
    if (this.#cache && this.#cache.mtimeMs === st.mtimeMs && this.#cache.size === st.size) return this.#cache.store;
    const parsed = storeSchema.safeParse(JSON.parse(readFileSync(this.#o.file, 'utf8')));
    if (!parsed.success)
      throw new ConfigError(
        `${this.#o.file} is not a fleet local secret store (${parsed.error.issues[0]?.message}). Fix: restore it from a backup, or move it away to start an empty store.`,
      );
    const store = parsed.data;
    this.#cache = { mtimeMs: st.mtimeMs, size: st.size, store };
    return store;
  }

  #save(store: Store): void {
    this.#cache = null;
    mkdirSync(path.dirname(this.#o.file), { recursive: true });
    const tmp = `${this.#o.file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(store, null, 1), { mode: 0o600 });
    renameSync(tmp, this.#o.file);
  }

  #readNow(name: string, version?: number): SecretValue {
    const entry = this.#load().secrets[name];
    const v = entry?.versions.find((x) => x.version === (version ?? entry.current));
    if (!entry || !v) {
      throw new SecretUnavailableError(
        'SECRET_NOT_FOUND',
        `secret "${name}" is not in the local store${version ? ` at version ${version}` : ''}. Fix: fleet secrets set ${name} (reads the value from stdin).`,
      );
    }
    return {
      value: unseal(this.#masterKey(), v, `fleet:${name}:${v.version}`, `local secret "${name}" v${v.version}`),
      version: String(v.version),
    };
  }

  lease(request: LeaseRequest): Promise<SecretLease> {
    return Promise.resolve(declaredLease(request, async (name) => this.#readNow(name)));
  }

  readCurrent(name: string): Promise<SecretValue> {
    try {
      return Promise.resolve(this.#readNow(name));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  readVersion(name: string, version: string): Promise<SecretValue> {
    try {
      return Promise.resolve(this.#readNow(name, Number(version)));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #add(name: string, value: Uint8Array, makeCurrent: boolean): { version: string } {
    const store = structuredClone(this.#load());
    const entry = (store.secrets[name] ??= { current: 0, versions: [] });
    const version = Math.max(0, ...entry.versions.map((v) => v.version)) + 1;
    entry.versions.push({
      version,
      createdAt: Date.now(),
      ...seal(this.#masterKey(), value, `fleet:${name}:${version}`),
    });
    // Keep the newest versions, never dropping the current one.
    while (entry.versions.length > this.#o.keepVersions) {
      const i = entry.versions.findIndex((v) => v.version !== entry.current);
      entry.versions.splice(i, 1);
    }
    if (makeCurrent) entry.current = version;
    this.#save(store);
    return { version: String(version) };
  }

  write(name: string, value: Uint8Array): Promise<{ version: string }> {
    return Promise.resolve(this.#add(name, value, true));
  }

  writePending(name: string, value: Uint8Array): Promise<{ version: string }> {
    return Promise.resolve(this.#add(name, value, false));
  }

  promote(name: string, pendingVersion: string): Promise<{ version: string }> {
    const store = structuredClone(this.#load());
    const entry = store.secrets[name];
    if (!entry?.versions.some((v) => v.version === Number(pendingVersion))) {
      return Promise.reject(
        new SecretUnavailableError('SECRET_NOT_FOUND', `secret "${name}" has no version ${pendingVersion} to promote`),
      );
    }
    entry.current = Number(pendingVersion);
    this.#save(store);
    return Promise.resolve({ version: pendingVersion });
  }

  retire(name: string, version: string): Promise<void> {
    const store = structuredClone(this.#load());
    const entry = store.secrets[name];
    if (entry && entry.current !== Number(version)) {
      entry.versions = entry.versions.filter((v) => v.version !== Number(version));
      this.#save(store);
    }
    return Promise.resolve();
  }

  list(): Promise<SecretMetadata[]> {
    return Promise.resolve(
      Object.entries(this.#load().secrets).map(([name, e]) => ({
        name,
        version: String(e.current),
        updatedAt: e.versions.find((v) => v.version === e.current)?.createdAt ?? 0,
      })),
    );
  }

  remove(name: string): Promise<void> {
    const store = structuredClone(this.#load());
    if (!store.secrets[name])
      return Promise.reject(
        new SecretUnavailableError('SECRET_NOT_FOUND', `secret "${name}" is not in the local store`),
      );
    delete store.secrets[name];
    this.#save(store);
    return Promise.resolve();
  }

  check(): Promise<void> {
    this.#masterKey();
    this.#load();
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.#key?.fill(0);
    this.#key = null;
    return Promise.resolve();
  }
}
