/**
 * What one job may send out of its sandbox and how the supervisor reads what comes back: the
 * limits it enforces per job, the violation a sandbox is killed for, the error codes a sandbox may
 * claim (the rest are the supervisor's own: a hostile job cannot send itself back to the queue), the
 * errors of a job stopped from outside, and the JSON sizes that are counted. Pure: no I/O.
 */
import {
  CancelledError,
  FleetError,
  ShutdownError,
  TimeoutError,
  type ErrorCode,
  type SerializedError,
} from '../errors.js';
import { MAX_ERROR_TEXT } from './protocol-schema.js';
import type { SecretMask } from '../secrets/secret-mask.js';

/**
 * What one job may send out of its sandbox, enforced by the supervisor (a sandbox's own entry keeps
 * an honest processor inside them; a hostile one that goes past them is killed).
 */
export interface BoundaryLimits {
  /** Log lines per job (ctx.log and console together); the entry drops the rest. @defaultValue 1000 */
  maxLogLines: number;
  /** Log bytes per job (messages and fields). @defaultValue 1048576 */
  maxLogBytes: number;
  /** JSON bytes of one progress value. @defaultValue 16384 */
  maxProgressBytes: number;
  /** Secret requests per job (names not delivered at job start). @defaultValue 100 */
  maxSecretRequests: number;
  /** Denied secret requests per job; one more and the sandbox is killed. @defaultValue 10 */
  maxDeniedSecretRequests: number;
  /** Messages of any kind per job. @defaultValue 100000 */
  maxMessagesPerJob: number;
}

export const DEFAULT_BOUNDARY_LIMITS: BoundaryLimits = Object.freeze({
  maxLogLines: 1000,
  maxLogBytes: 1024 * 1024,
  maxProgressBytes: 16 * 1024,
  maxSecretRequests: 100,
  maxDeniedSecretRequests: 10,
  maxMessagesPerJob: 100_000,
});

/** A sandbox broke the protocol or a limit and was killed (audit, metrics). */
export interface SandboxViolation {
  jobType: string;
  /** The job it was running; null when it was idle. */
  jobId: string | null;
  code: 'SANDBOX_PROTOCOL' | 'SANDBOX_LIMIT';
  /** What it sent, described (never the content itself). */
  problem: string;
}

export type StopReason = 'timeout' | 'cancelled' | 'shutdown';

/** The error a job ends with when it is stopped from outside. */
export function stopError(reason: StopReason, timeoutMs: number): FleetError {
  if (reason === 'timeout')
    return new TimeoutError(`job exceeded timeoutMs=${timeoutMs} and its sandbox was terminated`);
  if (reason === 'shutdown')
    return new ShutdownError('supervisor shut down before the job finished; it is returned to the queue');
  return new CancelledError('job was cancelled and its sandbox was terminated');
}

/**
 * Codes a sandbox may report its job failed with. The rest mean something to the supervisor
 * (a timeout it enforced, a shutdown it started, a crash it saw), so a sandbox claiming one is
 * reported as a processor failure instead: a hostile job cannot send itself back to the queue.
 */
const SANDBOX_CLAIMABLE = new Set<string>([
  'PROCESSOR_FAILED',
  'PROCESSOR_LOAD_FAILED',
  'RESULT_NOT_SERIALIZABLE',
  'RESULT_TOO_LARGE',
  'INVALID_PAYLOAD',
  'SECRET_SCOPE',
  'SECRET_NOT_FOUND',
  'SECRET_PROVIDER_UNAVAILABLE',
  'SECRET_PERMISSION_DENIED',
  'SECRET_AUTH_EXPIRED',
  'SECRET_INTEGRITY',
]);

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}… [${text.length - max} characters cut]` : text;
}

/** An error a sandbox reported, bounded, masked and with a code it may claim. */
export function errorFromSandbox(
  s: Pick<SerializedError, 'name' | 'message' | 'retryable'> & { code: string; stack?: string | undefined },
  mask?: SecretMask,
): FleetError {
  const text = (t: string, max: number): string => clip(mask ? mask.text(t) : t, max);
  const claimable = SANDBOX_CLAIMABLE.has(s.code);
  // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- membership in SANDBOX_CLAIMABLE (ErrorCode values) checked on the line above
  const code: ErrorCode = claimable ? (s.code as ErrorCode) : 'PROCESSOR_FAILED';
  const message = text(s.message, MAX_ERROR_TEXT.message);
  // The code is named only when it looks like one (a sandbox can put anything there, a value too).
  const reported = /^[A-Z][A-Z0-9_]{0,39}$/.test(s.code) ? text(s.code, 40) : 'a malformed code';
  const err = new FleetError(code, claimable ? message : `[sandbox reported ${reported}] ${message}`, {
    retryable: s.retryable,
  });
  err.name = text(s.name, MAX_ERROR_TEXT.name);
  err.stack = s.stack !== undefined ? text(s.stack, MAX_ERROR_TEXT.stack) : `${err.name}: ${message}`;
  return err;
}

/** JSON bytes of a value, or null when it is not JSON (too deep, a cycle). */
export function jsonBytes(value: unknown): number | null {
  try {
    const json = JSON.stringify(value);
    return json === undefined ? 0 : Buffer.byteLength(json);
  } catch {
    return null;
  }
}

/** JSON characters of a value, or null when it is not JSON. */
export function jsonLength(value: unknown): number | null {
  try {
    return JSON.stringify(value)?.length ?? 0;
  } catch {
    return null;
  }
}
