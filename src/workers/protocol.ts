import type { SerializedError } from '../errors.js';

/** Messages between a supervisor and one sandbox thread. Values only ever travel in `run`. */
export interface RunMessage {
  type: 'run';
  jobId: string;
  jobType: string;
  attempt: number;
  data: unknown;
}
export type ToSandbox = RunMessage | { type: 'abort'; reason: 'timeout' | 'cancelled' | 'shutdown' };

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface RunStats {
  /** Time the sandbox's event loop was busy during the job (a per-thread CPU-time proxy). */
  cpuMs: number;
  /** V8 heap in use after the job. */
  heapUsedBytes: number;
  /** V8 heap reserved at job end; the heap does not shrink within a job, so this bounds the peak. */
  peakHeapBytes: number;
}

export type FromSandbox =
  | { type: 'ready' }
  | { type: 'load-failed'; error: SerializedError }
  | { type: 'progress'; value: unknown }
  | { type: 'log'; level: LogLevel; msg: string; fields?: Record<string, unknown> }
  | ({ type: 'done'; ok: true; resultJson: string } & RunStats)
  | ({ type: 'done'; ok: false; error: SerializedError } & RunStats);

/** What a sandbox is started with (`workerData`). */
export interface SandboxInit {
  processorPath: string;
  jobType: string;
  maxResultBytes: number;
}
