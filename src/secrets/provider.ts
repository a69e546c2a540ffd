/**
 * The one small interface every secret backend implements. The core never imports a backend SDK;
 * it talks to these.
 */
/**
 * Every backend, by the name config uses. `secrets-manager` is AWS Secrets Manager, named after the
 * service as `kms` is (the AWS SDK client is `client-secrets-manager`).
 */
export const PROVIDER_KINDS = ['local', 'vault', 'kms', 'secrets-manager'] as const;
export type ProviderKind = (typeof PROVIDER_KINDS)[number];

export interface SecretValue {
  /** Plaintext in memory of its own (never Node's shared Buffer pool), so it can be zeroed or transferred. */
  value: Uint8Array;
  version: string;
}

/** Access for one job. `release()` always runs at job end, whatever happened to the job. */
export interface SecretLease {
  read(name: string): Promise<SecretValue>;
  release(): Promise<void>;
}

export interface LeaseRequest {
  jobId: string;
  jobType: string;
  /** Exactly the names the job type declares; a lease grants nothing else. */
  names: readonly string[];
  /** How long the job may run; credentials minted for it expire soon after. */
  ttlMs: number;
}

export interface SecretMetadata {
  name: string;
  version: string;
  updatedAt: number;
}

export interface SecretProvider {
  readonly kind: ProviderKind;
  lease(request: LeaseRequest): Promise<SecretLease>;
  /** Writes a new version and makes it current (CLI). */
  write(name: string, value: Uint8Array): Promise<{ version: string }>;
  /** Rotation: stores a new version as *pending*; jobs keep getting the current one. */
  writePending(name: string, value: Uint8Array): Promise<{ version: string }>;
  /** Rotation: makes the pending version current; returns the new current version. */
  promote(name: string, pendingVersion: string): Promise<{ version: string }>;
  /**
   * The current version, read with the provider's own identity (the supervisor's or scheduler's),
   * not through a job lease: for the fleet's own keys (the audit MAC key), never for job secrets.
   */
  readCurrent(name: string): Promise<SecretValue>;
  /** A specific version (pending, current or a previous one still in its grace window). */
  readVersion(name: string, version: string): Promise<SecretValue>;
  /** Rotation: drops a version (pending that failed its test, or previous after its grace window). */
  retire(name: string, version: string): Promise<void>;
  list(): Promise<SecretMetadata[]>;
  remove(name: string): Promise<void>;
  /** Throws a clear error if the backend is unreachable or our credentials are not valid. */
  check(): Promise<void>;
  close(): Promise<void>;
}
