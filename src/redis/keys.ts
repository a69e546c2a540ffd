/**
 * Every Redis key the fleet writes, named in one place (like BullMQ's `QueueKeys`), so that key
 * strings do not drift apart across modules and access rules (Redis ACLs) have one list of
 * patterns to be built from. `prefix` is `config.redis.prefix`.
 *
 * Hash tags (`{…}`) decide the Redis Cluster slot: a job type's queue keys share one, the audit
 * stream and its counters share one (they are written in one MULTI), and each secret's rotation
 * state and KMS ciphertexts sit in the secret's own.
 */

/** BullMQ's prefix for one job type's queue: `fleet:{echo}` (BullMQ appends `:echo:wait`, …). */
export function queuePrefix(prefix: string, jobType: string): string {
  return `${prefix}:{${jobType}}`;
}

/** One of BullMQ's keys of a job type's queue: `wait`, `completed`, … or a job id (the job's hash). */
export function queueKey(prefix: string, jobType: string, suffix: string): string {
  return `${queuePrefix(prefix, jobType)}:${jobType}:${suffix}`;
}

/** The audit stream (every secret access, every egress refusal). */
export function auditStreamKey(prefix: string): string {
  return `${prefix}:{audit}`;
}

/**
 * Access counters of one secret, beside the audit stream (same slot). Not under `prefix:{…}:`, so
 * the queue key pattern of the Redis ACL roles does not cover it.
 */
export function secretStatsKey(prefix: string, name: string): string {
  return `${prefix}:audit-stats:{audit}:${name}`;
}

/** The last (seq, MAC) of each audit writer's chain, beside the audit stream (written in the same MULTI). */
export function auditHeadsKey(prefix: string): string {
  return `${prefix}:audit-heads:{audit}`;
}

/**
 * BullMQ's prefix for the scheduler's rotation queue: outside the job queues' `prefix:{…}:*`
 * pattern, so the api and worker roles cannot touch rotation jobs.
 */
export function rotationQueuePrefix(prefix: string): string {
  return `${prefix}:sched:{rotation}`;
}

/** Rotation state of one secret: current version, outcomes, versions waiting to retire. */
export function rotationStateKey(prefix: string, secret: string): string {
  return `${prefix}:rotation:{${secret}}`;
}

/** Marks an Idempotency-Key whose first request is still being enqueued (short TTL), in the job's queue slot. */
export function idempotencyInFlightKey(prefix: string, jobType: string, jobId: string): string {
  return `${queuePrefix(prefix, jobType)}:in-flight:${jobId}`;
}

/** Pub/sub channel for cancellations sent to supervisors. */
export function controlChannel(prefix: string): string {
  return `${prefix}:control`;
}

/** Hash of supervisor heartbeats (`fleet status`, `fleet doctor`). */
export function supervisorsKey(prefix: string): string {
  return `${prefix}:supervisors`;
}

/** Job tokens holding Vault dynamic credentials, by accessor (see secrets/lease-ledger.ts). */
export function dynamicLeasesKey(prefix: string): string {
  return `${prefix}:dynamic-leases`;
}

/** KMS envelopes of one secret (every stored version). */
export function kmsSecretKey(prefix: string, name: string): string {
  return `${prefix}:kms-secret:{${name}}`;
}

/** Names with a stored KMS envelope (a set: a keyspace SCAN does not span a cluster). */
export function kmsIndexKey(prefix: string): string {
  return `${prefix}:{kms-index}`;
}

/**
 * The key patterns of each concern, for access rules: `~pattern` in a Redis ACL. The patterns do
 * not overlap: `prefix:{*}:*` (job queues) matches none of the others' keys.
 */
export function keyPatterns(
  prefix: string,
): Record<'queues' | 'rotationQueue' | 'audit' | 'rotation' | 'supervisors' | 'leases' | 'kms', string[]> {
  return {
    queues: [`${prefix}:{*}:*`],
    rotationQueue: [`${rotationQueuePrefix(prefix)}:*`],
    audit: [auditStreamKey(prefix), secretStatsKey(prefix, '*'), auditHeadsKey(prefix)],
    rotation: [rotationStateKey(prefix, '*')],
    supervisors: [supervisorsKey(prefix)],
    leases: [dynamicLeasesKey(prefix)],
    kms: [kmsSecretKey(prefix, '*'), kmsIndexKey(prefix)],
  };
}
