/**
 * What a processor module sees. A processor is an ordinary ESM module:
 *
 * ```ts
 * import type { Processor } from 'fleet';
 * const run: Processor<{ name: string }> = async (job, ctx) => {
 *   ctx.log.info('greeting', { name: job.data.name });
 *   return { hello: job.data.name };
 * };
 * export default run;
 * ```
 */
import { fieldOf } from '../errors.js';

export interface ProcessorJob<Data = unknown> {
  id: string;
  type: string;
  /** 1 for the first try. */
  attempt: number;
  data: Data;
}

export interface ProcessorLog {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/**
 * The job type's secrets. Values arrive as bytes and are zero-filled when the job ends; anything
 * a job writes out (logs, console, progress, result, errors) has them masked as `***`, including
 * their base64, hex and URL-encoded forms.
 */
export interface ProcessorSecrets {
  /** Names this job type may read. */
  readonly names: readonly string[];
  /** The value as bytes (zeroed at job end). Throws `SecretScopeError` for an undeclared name. */
  get(name: string): Promise<Buffer>;
  /** The value as a UTF-8 string. Strings cannot be zeroed: prefer `get` where a Buffer will do. */
  text(name: string): Promise<string>;
  /**
   * For a secret injected at egress (`inject`): this job's placeholder, to put where the value
   * goes (e.g. `Authorization: Bearer ${placeholder}` toward the secret's bound host). The egress
   * proxy swaps it for the value on the way out; the sandbox never holds the value, and the
   * placeholder is worthless anywhere else and after the job. `get`/`text` refuse such a secret.
   */
  placeholder(name: string): string;
}

export interface ProcessorContext {
  secrets: ProcessorSecrets;
  /** Aborted shortly before the hard kill (timeout), on cancellation and on shutdown. */
  signal: AbortSignal;
  log: ProcessorLog;
  /** Report progress (any JSON value); visible in `GET /v1/jobs/:id`. */
  progress(value: unknown): void;
}

export type Processor<Data = unknown, Result = unknown> = (
  job: ProcessorJob<Data>,
  ctx: ProcessorContext,
) => Promise<Result> | Result;

/** What a rotator gets: the secret's name and, on demand, its current value (zeroed afterwards by the caller). */
export interface RotatorContext {
  secret: string;
  current(): Promise<Buffer>;
}

/**
 * Rotation steps, like the well-known create → set → test → finish sequence. Only `create` is
 * required. `set` applies the new value to the external service, `test` proves it works (throw to
 * refuse it), `finish` runs when the previous version is retired after its grace window (revoke
 * the old credential there).
 */
/**
 * The rotator a module exports (a default object, or named functions), or null when it has no
 * `create` function. The optional steps are called with `?.`, so only `create` needs checking.
 */
export function rotatorOf(mod: unknown): Rotator | null {
  const r: unknown = fieldOf(mod, 'default') ?? mod;
  // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- create() is checked on this line
  return typeof fieldOf(r, 'create') === 'function' ? (r as Rotator) : null;
}

export interface Rotator {
  create(ctx: RotatorContext): Promise<Uint8Array> | Uint8Array;
  set?(ctx: RotatorContext, value: Uint8Array): Promise<void> | void;
  test?(ctx: RotatorContext, value: Uint8Array): Promise<void> | void;
  finish?(ctx: RotatorContext & { retiredVersion: string }): Promise<void> | void;
}
