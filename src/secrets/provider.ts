/**
 * The one small interface every secret backend implements. The core never imports a backend SDK;
 * it talks to these.
 */
import type { ProviderKind } from '../config/schema.js';
export { PROVIDER_KINDS } from '../config/schema.js';
export type { ProviderKind };

export interface SecretValue {
  /** Plaintext in memory of its own (never Node's shared Buffer pool), so it can be zeroed or transferred. */
  value: Uint8Array;
  version: string;
  /**
   * A credential the backend minted for this job (a Vault dynamic secret): its lease id, which the
   * backend revokes at job end. The audit records it; it is not itself a credential.
   */
  leaseId?: string;
  /**
   * Parts of the value to mask on their own as well (a dynamic credential's password inside its
   * connection string). Owned by the lease: zero-filled when it is released.
   */
  maskAlso?: readonly Uint8Array[];
}

/** How a backend-minted credential ended at job end (audited as `revoke`). */
export interface LeaseEnd {
  name: string;
  leaseId: string;
  /** The error, when the backend did not confirm the revocation (the credential then ends with the job token's TTL). */
  error?: string;
}

/** Access for one job. `release()` always runs at job end, whatever happened to the job. */
export interface SecretLease {
  read(name: string): Promise<SecretValue>;
  /** Ends the job's access; reports each backend-minted credential it revoked (or failed to). */
  release(): Promise<LeaseEnd[] | void>;
}

/**
 * Where a supervisor notes the backend tokens that hold credentials minted for its jobs, before the
 * first one is minted, so that another supervisor can revoke them should this one die mid-job.
 */
export interface LeaseLedger {
  /** The supervisor writing through this ledger: job tokens it mints carry its id in their metadata. */
  readonly owner: string;
  hold(entry: { accessor: string; jobId: string; jobType: string; expiresAt: number }): Promise<void>;
  drop(accessor: string): Promise<void>;
}

export interface LeaseRequest {
  jobId: string;
  jobType: string;
  /** Exactly the names the job type declares; a lease grants nothing else. */
  names: readonly string[];
  /** How long the job may run; credentials minted for it expire soon after. */
  ttlMs: number;
  /** Where tokens that mint backend credentials are noted (the supervisor's; absent in the CLI). */
  ledger?: LeaseLedger;
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
