import type { SerializedError } from '../errors.js';

/**
 * Messages between a supervisor and one sandbox. Values only ever travel in `run` and `secret`.
 * A process sandbox's travel as frames on a channel of their own (channel.ts); every message a
 * sandbox sends is parsed against protocol-schema.ts before the supervisor acts on it.
 */
export interface RunMessage {
  type: 'run';
  jobId: string;
  jobType: string;
  attempt: number;
  data: unknown;
  /** Secret names this job type declares. */
  secretNames: string[];
  /** The declared `deliver` secrets, fetched at job start and transferred (not copied) into the sandbox. */
  secrets: { name: string; value: Uint8Array; version: string }[];
  /** The declared `inject` secrets: only a per-job placeholder each; the values stay with the supervisor. */
  placeholders?: { name: string; placeholder: string }[];
}
export type SecretReply =
  | { type: 'secret'; reqId: number; ok: true; value: Uint8Array; version: string }
  | { type: 'secret'; reqId: number; ok: false; error: SerializedError };
/** A process sandbox gets its init as the first message (threads get it as `workerData`). */
export interface InitMessage {
  type: 'init';
  init: SandboxInit;
}
export type ToSandbox =
  RunMessage | SecretReply | InitMessage | { type: 'abort'; reason: 'timeout' | 'cancelled' | 'shutdown' };

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface RunStats {
  /** Time the sandbox's event loop was busy during the job (a per-thread CPU-time proxy). */
  cpuMs: number;
  /** V8 heap in use after the job. */
  heapUsedBytes: number;
  /** V8 heap reserved at job end; the heap does not shrink within a job, so this bounds the peak. */
  peakHeapBytes: number;
  /** Secret values handed to the job and zero-filled at its end. */
  secretsZeroed: number;
}

export type FromSandbox =
  | { type: 'ready' }
  | { type: 'load-failed'; error: SerializedError }
  | { type: 'progress'; value: unknown }
  | { type: 'log'; level: LogLevel; msg: string; fields?: Record<string, unknown>; source: 'processor' | 'console' }
  | { type: 'secret-request'; reqId: number; name: string }
  | ({ type: 'done'; ok: true; resultJson: string; /** A rotator's created value. */ value?: Uint8Array } & RunStats)
  | ({ type: 'done'; ok: false; error: SerializedError } & RunStats);

/** What a sandbox is started with (`workerData`, or the `init` message of a process). */
export interface SandboxInit {
  /** `processor`: a job processor (default export). `rotator`: a rotator module (create/set/test/finish). */
  kind?: 'processor' | 'rotator';
  processorPath: string;
  jobType: string;
  maxResultBytes: number;
  /** CPU priority (nice) the sandbox's JS thread lowers itself to before loading the module. */
  nice?: number;
  /** Log lines a job may write (ctx.log and console together) before the rest is dropped. */
  maxLogLines: number;
  /** Log bytes (messages and fields) a job may write before the rest is dropped. */
  maxLogBytes: number;
  /** JSON bytes of one `ctx.progress()` value; a larger one throws in the processor. */
  maxProgressBytes: number;
  /** OS layer: a loopback listener inside the sandbox's network namespace, relayed to the egress proxy's socket. */
  egressForwarder?: { port: number; socket: string };
  /** Switch HTTP clients to HTTP(S)_PROXY on their first use (Node ≥ 24), not at start-up. */
  lazyProxy?: boolean;
}
