/**
 * Every error the fleet raises on purpose. Each carries a stable `code` (machine-readable, used in
 * HTTP bodies and in a failed job's reason), whether retrying can help (`retryable`), and the
 * underlying `cause`. They survive a trip across the sandbox boundary through
 * {@link serializeError} / {@link deserializeError}.
 */
export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'CONFIG_NOT_FOUND'
  | 'INVALID_JSON'
  | 'INVALID_PAYLOAD'
  | 'INVALID_REQUEST'
  | 'PAYLOAD_TOO_LARGE'
  | 'PAYLOAD_TOO_DEEP'
  | 'IDEMPOTENCY_KEY_REUSED'
  | 'IDEMPOTENCY_KEY_IN_FLIGHT'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'UNKNOWN_JOB_TYPE'
  | 'JOB_NOT_FOUND'
  | 'UNAUTHENTICATED'
  | 'FORBIDDEN'
  | 'TIMEOUT'
  | 'CANCELLED'
  | 'SHUTDOWN'
  | 'MEMORY_LIMIT'
  | 'SANDBOX_CRASHED'
  | 'SANDBOX_SPAWNER_DIED'
  | 'SANDBOX_PROTOCOL'
  | 'SANDBOX_LIMIT'
  | 'PROCESSOR_FAILED'
  | 'PROCESSOR_LOAD_FAILED'
  | 'RESULT_NOT_SERIALIZABLE'
  | 'RESULT_TOO_LARGE'
  | 'REDIS_UNAVAILABLE'
  | 'REDIS_FULL'
  | 'REDIS_NOT_INSTALLED'
  | 'TLS_REFUSED'
  | 'SECRET_SCOPE'
  | 'SECRET_NOT_FOUND'
  | 'SECRET_PROVIDER_UNAVAILABLE'
  | 'SECRET_PERMISSION_DENIED'
  | 'SECRET_AUTH_EXPIRED'
  | 'SECRET_INTEGRITY'
  | 'JOB_DATA_NOT_SEALED'
  | 'JOB_DATA_TAMPERED'
  | 'DATA_KEY_UNAVAILABLE'
  | 'DATA_KEY_RETIRED'
  | 'ILLEGAL_STATE'
  | 'INTERNAL';

export interface FleetErrorOptions {
  cause?: unknown;
  retryable?: boolean;
  /** Extra machine-readable fields (never secret values). */
  details?: Record<string, unknown>;
}

export class FleetError extends Error {
  override name = 'FleetError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: FleetErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = options.details;
  }
}

function define<N extends string>(name: N, code: ErrorCode, retryable: boolean) {
  return class extends FleetError {
    override name: string = name;
    constructor(message: string, options: FleetErrorOptions = {}) {
      super(code, message, { retryable, ...options });
    }
  };
}

export class ConfigError extends define('ConfigError', 'CONFIG_INVALID', false) {}
export class ValidationError extends define('ValidationError', 'INVALID_PAYLOAD', false) {}
export class UnknownJobTypeError extends define('UnknownJobTypeError', 'UNKNOWN_JOB_TYPE', false) {}
export class JobNotFoundError extends define('JobNotFoundError', 'JOB_NOT_FOUND', false) {}
export class AuthError extends define('AuthError', 'UNAUTHENTICATED', false) {}
export class ForbiddenError extends define('ForbiddenError', 'FORBIDDEN', false) {}
export class TimeoutError extends define('TimeoutError', 'TIMEOUT', true) {}
export class CancelledError extends define('CancelledError', 'CANCELLED', false) {}
export class ShutdownError extends define('ShutdownError', 'SHUTDOWN', true) {}
export class MemoryLimitError extends define('MemoryLimitError', 'MEMORY_LIMIT', false) {}
export class SandboxCrashError extends define('SandboxCrashError', 'SANDBOX_CRASHED', true) {}
/**
 * The process that starts a supervisor's process sandboxes (sandbox-spawner.ts) died, and the
 * sandboxes it had started went with it: their jobs fail with this and are retried; the next
 * sandbox gets a new spawner.
 */
export class SandboxSpawnerError extends define('SandboxSpawnerError', 'SANDBOX_SPAWNER_DIED', true) {}
/**
 * A sandbox sent what the protocol does not allow (a malformed or out-of-turn message, a frame
 * above the channel's cap, a secret-request flood): the sandbox is killed and the job fails without
 * a retry (a replay would only run the same code again).
 */
export class SandboxProtocolError extends define('SandboxProtocolError', 'SANDBOX_PROTOCOL', false) {}
/** A job went past a limit the supervisor enforces outside its sandbox (result size, messages, log volume). */
export class SandboxLimitError extends define('SandboxLimitError', 'SANDBOX_LIMIT', false) {}
export class ProcessorError extends define('ProcessorError', 'PROCESSOR_FAILED', true) {}
export class ProcessorLoadError extends define('ProcessorLoadError', 'PROCESSOR_LOAD_FAILED', false) {}
export class ResultError extends define('ResultError', 'RESULT_NOT_SERIALIZABLE', false) {}
export class RedisUnavailableError extends define('RedisUnavailableError', 'REDIS_UNAVAILABLE', true) {}
/** Redis refused a write because it is at `maxmemory` (noeviction): retrying cannot help until memory is freed. */
export class RedisFullError extends define('RedisFullError', 'REDIS_FULL', false) {}
/**
 * A TLS connection (to Redis, Vault or the API) failed its handshake: the peer's certificate is not
 * trusted or does not name the host, it asked for a client certificate, or it does not speak TLS.
 * Retrying the same settings cannot help.
 */
export class TlsRefusedError extends define('TlsRefusedError', 'TLS_REFUSED', false) {}
export class SecretScopeError extends define('SecretScopeError', 'SECRET_SCOPE', false) {}

/**
 * A job of a type with `encryptData` whose stored data is not sealed (written around the fleet's
 * producers, e.g. by a BullMQ client in another language): it fails without a retry.
 */
export class DataNotSealedError extends define('DataNotSealedError', 'JOB_DATA_NOT_SEALED', false) {}
/** Sealed job data that fails authentication: altered, or moved from another job, type, owner or field. */
export class DataTamperedError extends define('DataTamperedError', 'JOB_DATA_TAMPERED', false) {}
/** The data key cannot be had right now (its store is unreachable, or this component holds none). */
export class DataKeyUnavailableError extends define('DataKeyUnavailableError', 'DATA_KEY_UNAVAILABLE', true) {}
/** Job data sealed under a data key version that has been retired from the store. */
export class DataKeyRetiredError extends define('DataKeyRetiredError', 'DATA_KEY_RETIRED', false) {}

/**
 * A lifecycle call out of turn: a supervisor or scheduler started twice, or started again after it
 * stopped (each instance runs once, as Temporal's workers do). A caller's bug, not retried.
 */
export class IllegalStateError extends define('IllegalStateError', 'ILLEGAL_STATE', false) {}

/** A secret could not be produced; `code` tells why (missing, provider down, denied, auth expired, tampered). */
export class SecretUnavailableError extends FleetError {
  override name = 'SecretUnavailableError';
}

/** Coerces anything thrown into an `Error`, so callers never handle `unknown`. */
export function toError(value: unknown): Error {
  if (value instanceof Error) return value;
  if (typeof value === 'string') return new Error(value);
  let rendered: string;
  try {
    rendered = JSON.stringify(value) ?? String(value);
  } catch {
    rendered = String(value);
  }
  return new Error(`non-Error value thrown: ${rendered}`);
}

/** The message of anything thrown. */
export function errorMessage(value: unknown): string {
  return toError(value).message;
}

/** A property of anything thrown or parsed (`err.status`, `body.error`), or undefined; never throws. */
export function fieldOf(value: unknown, key: string): unknown {
  return typeof value === 'object' && value !== null && key in value ? Reflect.get(value, key) : undefined;
}

/** The `code` of a Node system error (`ENOENT`, `EADDRINUSE`, …), if it has one. */
export function errnoCode(value: unknown): string | undefined {
  const code = fieldOf(value, 'code');
  return typeof code === 'string' ? code : undefined;
}

/** Why a TLS handshake failed, in the terms an operator acts on. */
export interface TlsFailure {
  kind: 'untrusted' | 'name' | 'expired' | 'client-certificate' | 'client-certificate-refused' | 'not-tls' | 'other';
  /** Node's or OpenSSL's own words, with its code. */
  reason: string;
}

const TLS_KINDS: [RegExp, TlsFailure['kind']][] = [
  [
    /^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?|CERT_UNTRUSTED|CERT_SIGNATURE_FAILURE|CERT_CHAIN_TOO_LONG|INVALID_CA)$/,
    'untrusted',
  ],
  [/^(ERR_TLS_CERT_ALTNAME_INVALID|HOSTNAME_MISMATCH)$/, 'name'],
  [/^(CERT_HAS_EXPIRED|CERT_NOT_YET_VALID)$/, 'expired'],
  [/CERTIFICATE_REQUIRED$/, 'client-certificate'],
  [
    /ALERT_(BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_EXPIRED)$/,
    'client-certificate-refused',
  ],
  [/^ERR_SSL_(WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|HTTP_REQUEST)$/, 'not-tls'],
  [/^(ERR_SSL_|ERR_TLS_|EPROTO$)/, 'other'],
];

/**
 * The TLS failure behind an error, if that is what it is. Looks through `cause` (fetch) and
 * `lastNodeError` (an ioredis Cluster that could reach no node).
 */
export function tlsFailureOf(value: unknown): TlsFailure | null {
  for (let e: unknown = value, depth = 0; e && depth < 5; depth++) {
    const code = errnoCode(e);
    if (code) {
      const kind = TLS_KINDS.find(([re]) => re.test(code))?.[1];
      // OpenSSL's `reason` ("tlsv13 alert certificate required") without its file and line noise.
      const reason = fieldOf(e, 'reason');
      const words = (typeof reason === 'string' && reason ? reason : toError(e).message).trim();
      if (kind) return { kind, reason: `${words} (${code})` };
    }
    e = fieldOf(e, 'cause') ?? fieldOf(e, 'lastNodeError');
  }
  return null;
}

/** The plain shape of an error that crossed a thread or process boundary. */
export interface SerializedError {
  name: string;
  code: ErrorCode;
  message: string;
  retryable: boolean;
  stack?: string;
  details?: Record<string, unknown>;
}

export function serializeError(value: unknown): SerializedError {
  const err = toError(value);
  const fleet = err instanceof FleetError ? err : undefined;
  const out: SerializedError = {
    name: err.name,
    code: fleet?.code ?? 'PROCESSOR_FAILED',
    message: err.message,
    retryable: fleet?.retryable ?? true,
  };
  if (err.stack !== undefined) out.stack = err.stack;
  if (fleet?.details !== undefined) out.details = fleet.details;
  return out;
}

export function deserializeError(s: SerializedError): FleetError {
  const err = new FleetError(s.code, s.message, {
    retryable: s.retryable,
    ...(s.details ? { details: s.details } : {}),
  });
  err.name = s.name;
  if (s.stack !== undefined) err.stack = s.stack;
  return err;
}

/**
 * A failed job's reason is stored by BullMQ as a string; we prefix it with the code so that
 * `GET /v1/jobs/:id` and the CLI can return it machine-readably: `"[TIMEOUT] job exceeded …"`.
 */
export function formatFailedReason(err: Error): string {
  const code = err instanceof FleetError ? err.code : 'PROCESSOR_FAILED';
  return `[${code}] ${err.message}`;
}

export function parseFailedReason(reason: string): { code: string; message: string } {
  const m = /^\[([A-Z_]+)\] ([\s\S]*)$/.exec(reason);
  return m?.[1] !== undefined && m[2] !== undefined
    ? { code: m[1], message: m[2] }
    : { code: 'PROCESSOR_FAILED', message: reason };
}
