/**
 * The two ways a sandbox runs, behind one small interface the {@link Sandbox} drives:
 * - {@link startThreadHost} (here): a worker thread of the supervisor (own heap and module graph,
 *   empty environment). Bounds time and memory; it is not a security boundary.
 * - `startProcessHost` (process-host.ts): its own OS process with an empty environment and no
 *   inherited file descriptors, under Node's permission model, and on Linux inside bubblewrap's
 *   namespaces with a private size-capped /tmp and no network but its egress proxy.
 * Both end their start in {@link awaitReady}: the processor loaded, or a named load error.
 */
import { Worker } from 'node:worker_threads';
import {
  FleetError,
  MemoryLimitError,
  ProcessorError,
  ProcessorLoadError,
  SandboxCrashError,
  SandboxProtocolError,
  SandboxSpawnerError,
} from '../errors.js';
import type { CgroupUsage } from './resource-limits.js';
import { parseFromSandbox } from './protocol-schema.js';
import { compiledPath } from '../runtime-path.js';
import type { SandboxInit, ToSandbox } from './protocol.js';
import type { SandboxLayer } from './sandbox-boundary.js';

/**
 * What every sandbox starts: the entry and the modules it imports as one CommonJS file (made by
 * `npm run build`, scripts/bundle-sandbox-entry.mjs), which spares each process sandbox's start
 * resolving and compiling them one by one, and Node's ES module loader for the entry itself.
 */
export const SANDBOX_ENTRY = compiledPath(import.meta.url, './sandbox-entry.bundle.cjs');

export interface SandboxHost {
  readonly layers: readonly SandboxLayer[];
  /** The OS process (bubblewrap's, with the OS layer); absent for threads. */
  readonly pid?: number;
  /**
   * Sends a message; `transfer` moves ArrayBuffers (threads); `sent` runs once the bytes left this
   * process. Throws only for a message too large for the channel.
   */
  post(msg: ToSandbox, transfer?: ArrayBuffer[], sent?: () => void): void;
  /** Every message the sandbox sends, unchecked: the {@link Sandbox} parses it. */
  onMessage(fn: (msg: unknown) => void): void;
  /**
   * The channel itself was broken (bytes that are no frame, a frame above the cap:
   * SANDBOX_PROTOCOL), or the sandbox went past a limit its host enforces (egress refusals:
   * SANDBOX_LIMIT).
   */
  onViolation(fn: (problem: string, code?: 'SANDBOX_PROTOCOL' | 'SANDBOX_LIMIT') => void): void;
  /** Called once when the sandbox ends on its own (crash, exit, memory limit). */
  onDeath(fn: (err: FleetError) => void): void;
  /** The job the egress proxy attributes connections to; a new job also restarts the cgroup's figures. */
  setJob(jobId: string | null): void;
  /** CPU time and peak memory of the job so far, from the sandbox's cgroup (null without one). */
  usage(): CgroupUsage | null;
  kill(): Promise<void>;
}

const LOAD_TIMEOUT_MS = 30_000;

/**
 * The largest frame the supervisor reads from a sandbox: a result at its limit, JSON-escaped in
 * the worst case (each character as `\u00XX`), plus room for the rest of the message.
 */
export function maxFrameFromSandbox(maxResultBytes: number): number {
  return Math.max(1024 * 1024, 6 * maxResultBytes + 64 * 1024);
}

/** Resolves with the host once the processor loaded (`ready`); rejects with a load error. */
export function awaitReady(host: SandboxHost, what: string): Promise<SandboxHost> {
  return new Promise((resolve, reject) => {
    let done = false;
    const timer = setTimeout(
      () => finish(new ProcessorLoadError(`${what} did not load within ${LOAD_TIMEOUT_MS} ms`)),
      LOAD_TIMEOUT_MS,
    );
    const finish = (err: Error | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        void host.kill();
        reject(err);
      } else resolve(host);
    };
    host.onMessage((raw) => {
      const parsed = parseFromSandbox(raw);
      if (!parsed.ok) finish(new SandboxProtocolError(`${what} sent ${parsed.problem} while loading`));
      else if (parsed.msg.type === 'ready') finish(null);
      else if (parsed.msg.type === 'load-failed')
        finish(new ProcessorLoadError(parsed.msg.error.message.slice(0, 8192)));
      else finish(new SandboxProtocolError(`${what} sent a "${parsed.msg.type}" message before it loaded`));
    });
    host.onViolation((problem) =>
      finish(new SandboxProtocolError(`${what} broke its channel while loading: ${problem}`)),
    );
    host.onDeath((err) =>
      finish(
        // Its spawner's death is not the processor's: that code stays, and the job is retried.
        err instanceof SandboxSpawnerError
          ? err
          : new ProcessorLoadError(`${what} failed to start: ${err.message}`, { cause: err }),
      ),
    );
  });
}

export function startThreadHost(init: SandboxInit, maxOldGenerationSizeMb: number): Promise<SandboxHost> {
  const worker = new Worker(SANDBOX_ENTRY, {
    workerData: init,
    // The sandbox sees none of the supervisor's environment (tokens, URLs) and no argv.
    env: { NODE_ENV: process.env.NODE_ENV ?? 'production' },
    argv: [],
    stdout: false,
    stderr: false,
    resourceLimits: { maxOldGenerationSizeMb, maxYoungGenerationSizeMb: 16, stackSizeMb: 4 },
  });
  let onMessage: (msg: unknown) => void = () => undefined;
  let onDeath: (err: FleetError) => void = () => undefined;
  let dead = false;
  const die = (err: FleetError): void => {
    if (dead) return;
    dead = true;
    onDeath(err);
  };
  worker.on('message', (m: unknown) => onMessage(m));
  // A message the supervisor's thread cannot deserialize (a thread is no security boundary, but it
  // must not crash the supervisor either).
  worker.on('messageerror', (err) =>
    die(new ProcessorError(`sandbox sent a message that cannot be read: ${err.message}`)),
  );
  worker.on('error', (err: Error & { code?: string }) =>
    die(
      err.code === 'ERR_WORKER_OUT_OF_MEMORY'
        ? new MemoryLimitError(
            `job exceeded its memory limit (maxOldGenerationSizeMb=${maxOldGenerationSizeMb}) and its sandbox was terminated`,
          )
        : new ProcessorError(`uncaught error in sandbox: ${err.message}`, { cause: err }),
    ),
  );
  worker.on('exit', (code) =>
    die(new SandboxCrashError(`sandbox exited with code ${code} mid-job (process.exit() or a crash in the processor)`)),
  );
  const host: SandboxHost = {
    layers: ['thread'],
    post: (msg, transfer = [], sent) => {
      if (!dead) worker.postMessage(msg, transfer);
      sent?.();
    },
    onMessage: (fn) => (onMessage = fn),
    onViolation: () => undefined,
    onDeath: (fn) => (onDeath = fn),
    setJob: () => undefined,
    usage: () => null,
    kill: async () => {
      dead = true;
      await worker.terminate();
    },
  };
  return awaitReady(host, `sandbox thread for ${init.jobType}`);
}
