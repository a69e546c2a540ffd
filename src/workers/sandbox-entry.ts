/**
 * Runs inside a sandbox thread: loads one processor module, then runs the jobs it is sent, one
 * at a time. Everything leaving this thread goes through `post`, so nothing reaches the
 * supervisor that is not a plain, checked message.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import { ProcessorLoadError, ResultError, serializeError, CancelledError, TimeoutError, ShutdownError } from '../errors.js';
import type { FromSandbox, LogLevel, RunMessage, RunStats, SandboxInit, ToSandbox } from './protocol.js';
import type { Processor, ProcessorContext } from './processor-api.js';

const init = workerData as SandboxInit;
const port = parentPort!;
const post = (msg: FromSandbox): void => port.postMessage(msg);

let current: AbortController | null = null;

async function load(): Promise<Processor> {
  if (/\.[cm]?ts$/.test(init.processorPath)) {
    // TypeScript processors need a loader in this thread; JS processors skip the cost.
    const { register } = await import('tsx/esm/api');
    register();
  }
  const mod = (await import(pathToFileURL(init.processorPath).href)) as { default?: unknown };
  if (typeof mod.default !== 'function') {
    throw new ProcessorLoadError(
      `processor ${init.processorPath} has no default export function. Fix: export default async function (job, ctx) { … }`,
    );
  }
  return mod.default as Processor;
}

function abortReasonError(reason: string): Error {
  if (reason === 'timeout') return new TimeoutError('job timed out');
  if (reason === 'shutdown') return new ShutdownError('supervisor is shutting down');
  return new CancelledError('job was cancelled');
}

function rejectUnserializable(_key: string, value: unknown): unknown {
  if (typeof value === 'function' || typeof value === 'symbol') {
    throw new ResultError(`result contains a ${typeof value}, which cannot be stored. Fix: return plain JSON data.`);
  }
  return value;
}

function stats(eluStart: ReturnType<typeof performance.eventLoopUtilization>): RunStats {
  const elu = performance.eventLoopUtilization(eluStart);
  const heap = v8.getHeapStatistics();
  return { cpuMs: elu.active, heapUsedBytes: heap.used_heap_size, peakHeapBytes: heap.total_heap_size };
}

async function run(processor: Processor, msg: RunMessage): Promise<void> {
  const controller = new AbortController();
  current = controller;
  const eluStart = performance.eventLoopUtilization();
  const logAt =
    (level: LogLevel) =>
    (m: string, fields?: Record<string, unknown>): void =>
      post({ type: 'log', level, msg: String(m), ...(fields ? { fields } : {}) });
  const ctx: ProcessorContext = {
    signal: controller.signal,
    log: { debug: logAt('debug'), info: logAt('info'), warn: logAt('warn'), error: logAt('error') },
    progress: (value) => post({ type: 'progress', value }),
  };
  try {
    const result = await processor({ id: msg.jobId, type: msg.jobType, attempt: msg.attempt, data: msg.data }, ctx);
    const resultJson = JSON.stringify(result ?? null, rejectUnserializable);
    if (Buffer.byteLength(resultJson) > init.maxResultBytes) {
      const tooLarge = new ResultError(
        `result is ${Buffer.byteLength(resultJson)} bytes, above maxResultBytes=${init.maxResultBytes}. Fix: store large output elsewhere and return a reference.`,
      );
      post({ type: 'done', ok: false, error: { ...serializeError(tooLarge), code: 'RESULT_TOO_LARGE' }, ...stats(eluStart) });
      return;
    }
    post({ type: 'done', ok: true, resultJson, ...stats(eluStart) });
  } catch (err) {
    const reason = controller.signal.aborted ? String(controller.signal.reason) : null;
    const error = reason ? abortReasonError(reason) : err instanceof TypeError && /BigInt|circular/i.test(err.message)
      ? new ResultError(`result cannot be serialized: ${err.message}. Fix: return plain JSON data.`)
      : err;
    post({ type: 'done', ok: false, error: serializeError(error), ...stats(eluStart) });
  } finally {
    current = null;
  }
}

async function main(): Promise<void> {
  let processor: Processor;
  try {
    processor = await load();
  } catch (err) {
    post({ type: 'load-failed', error: serializeError(err instanceof ProcessorLoadError ? err : new ProcessorLoadError(`could not load processor ${init.processorPath}: ${(err as Error).message}`)) });
    return;
  }
  port.on('message', (msg: ToSandbox) => {
    if (msg.type === 'run') void run(processor, msg);
    else if (msg.type === 'abort') current?.abort(msg.reason);
  });
  post({ type: 'ready' });
}

void main();
