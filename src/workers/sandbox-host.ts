/**
 * The two ways a sandbox runs, behind one small interface the {@link Sandbox} drives:
 * - {@link startThreadHost}: a worker thread of the supervisor (own heap and module graph, empty
 *   environment). Bounds time and memory; it is not a security boundary.
 * - {@link startProcessHost}: its own OS process with an empty environment and no inherited file
 *   descriptors, under Node's permission model, and on Linux inside bubblewrap's namespaces with a
 *   private size-capped /tmp and no network but its egress proxy.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, chmodSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import {
  FleetError,
  MemoryLimitError,
  ProcessorError,
  ProcessorLoadError,
  SandboxCrashError,
  deserializeError,
} from '../errors.js';
import { compiledPath } from '../runtime-path.js';
import { EgressProxy, type EgressRefusal, type InjectOptions } from './egress-proxy.js';
import type { FromSandbox, SandboxInit, ToSandbox } from './protocol.js';
import {
  processSandboxCommand,
  SANDBOX_EGRESS_SOCKET,
  SANDBOX_PROXY_PORT,
  type Egress,
  type OsLayer,
  type SandboxLayer,
} from './sandbox-boundary.js';

export const SANDBOX_ENTRY = compiledPath(import.meta.url, './sandbox-entry.js');

export interface SandboxHost {
  readonly layers: readonly SandboxLayer[];
  /** The OS process (bubblewrap's, with the OS layer); absent for threads. */
  readonly pid?: number;
  /** Sends a message; `transfer` moves ArrayBuffers (threads); `sent` runs once the bytes left this process. */
  post(msg: ToSandbox, transfer?: ArrayBuffer[], sent?: () => void): void;
  onMessage(fn: (msg: FromSandbox) => void): void;
  /** Called once when the sandbox ends on its own (crash, exit, memory limit). */
  onDeath(fn: (err: FleetError) => void): void;
  /** The job the egress proxy attributes connections to. */
  setJob(jobId: string | null): void;
  kill(): Promise<void>;
}

/** Process-sandbox settings of one job type. */
export interface ProcessHostOptions {
  osLayer: OsLayer;
  egress: Egress;
  tmpSizeMb: number;
  readPaths: readonly string[];
  forbiddenPaths: readonly string[];
  fleetAddresses: readonly string[];
  onEgressRefused?: (refusal: EgressRefusal & { jobId: string | null }) => void;
  /** The type takes a secret as `inject`: the egress proxy terminates TLS (fleet CA) and swaps placeholders. */
  inject?: Omit<InjectOptions, 'currentJob'>;
  /** Only `npm run bench` turns this off, to price the permission model alone. @defaultValue true */
  permissionModel?: boolean;
}

const LOAD_TIMEOUT_MS = 30_000;

/** Resolves with the host once the processor loaded (`ready`); rejects with a load error. */
function awaitReady(host: SandboxHost, what: string): Promise<SandboxHost> {
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
    host.onMessage((msg) => {
      if (msg.type === 'ready') finish(null);
      else if (msg.type === 'load-failed') finish(deserializeError(msg.error));
    });
    host.onDeath((err) => finish(new ProcessorLoadError(`${what} failed to start: ${err.message}`, { cause: err })));
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
  let onMessage: (msg: FromSandbox) => void = () => undefined;
  let onDeath: (err: FleetError) => void = () => undefined;
  let dead = false;
  const die = (err: FleetError): void => {
    if (dead) return;
    dead = true;
    onDeath(err);
  };
  worker.on('message', (m: FromSandbox) => onMessage(m));
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
    onDeath: (fn) => (onDeath = fn),
    setJob: () => undefined,
    kill: async () => {
      dead = true;
      await worker.terminate();
    },
  };
  return awaitReady(host, `sandbox thread for ${init.jobType}`);
}

/** The last bytes a sandbox process wrote to stderr (Node's own fatal errors; processors' output goes over IPC). */
function tail(buf: string, chunk: Buffer): string {
  return (buf + chunk.toString('utf8')).slice(-4000);
}

export async function startProcessHost(
  init: SandboxInit,
  maxOldGenerationSizeMb: number,
  options: ProcessHostOptions,
): Promise<SandboxHost> {
  // One private directory per sandbox on the host: its temp dir (without the OS layer) and the
  // egress socket. Mode 0700, removed with the sandbox.
  const hostDir = mkdtempSync(path.join(tmpdir(), 'fleet-sandbox-'));
  chmodSync(hostDir, 0o700);
  const tmpDir = path.join(hostDir, 'tmp');
  mkdirSync(tmpDir, { mode: 0o700 });
  let jobId: string | null = null;
  let proxy: EgressProxy | null = null;
  let child: ChildProcess | null = null;
  const cleanup = async (): Promise<void> => {
    await proxy?.close().catch(() => undefined);
    rmSync(hostDir, { recursive: true, force: true });
  };
  const inject = options.inject;
  try {
    const os = options.osLayer.available;
    let egressSocket: string | null = null;
    let proxyUrl: string | null = null;
    let processInit: SandboxInit = init;
    if (options.egress !== 'none') {
      proxy = new EgressProxy({
        egress: options.egress,
        fleetAddresses: options.fleetAddresses,
        onRefused: (r) => options.onEgressRefused?.({ ...r, jobId }),
        ...(inject
          ? {
              inject: {
                ...inject,
                currentJob: () => jobId,
                onRefused: (r) => inject.onRefused({ ...r, jobType: init.jobType }),
              },
            }
          : {}),
      });
      if (os) {
        egressSocket = path.join(hostDir, 'egress.sock');
        await proxy.listen(egressSocket);
        processInit = { ...init, egressForwarder: { port: SANDBOX_PROXY_PORT, socket: SANDBOX_EGRESS_SOCKET } };
        proxyUrl = `http://127.0.0.1:${SANDBOX_PROXY_PORT}`;
      } else {
        // Without namespaces the proxy is advisory: the process has the host's network too.
        proxyUrl = await proxy.listen(0);
      }
    }
    const cmd = processSandboxCommand({
      entry: SANDBOX_ENTRY,
      processorPath: init.processorPath,
      readPaths: options.readPaths,
      tmpDir,
      tmpSizeMb: options.tmpSizeMb,
      maxOldGenerationSizeMb,
      egress: options.egress,
      egressSocket,
      proxyUrl,
      osLayer: options.osLayer,
      forbiddenPaths: options.forbiddenPaths,
      ...(options.inject ? { caCertFile: options.inject.ca.certFile } : {}),
      ...(options.permissionModel === false ? { permissionModel: false } : {}),
    });
    child = spawn(cmd.command, cmd.args, {
      env: cmd.env,
      // stdin closed, stdout ignored (processors' output goes over IPC, masked), stderr kept for
      // Node's own fatal errors, fd 3 the IPC channel; nothing else is inherited.
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      serialization: 'advanced',
      detached: false,
    });
    const proc = child;
    let stderr = '';
    proc.stderr?.on('data', (c: Buffer) => (stderr = tail(stderr, c)));
    let onMessage: (msg: FromSandbox) => void = () => undefined;
    let onDeath: (err: FleetError) => void = () => undefined;
    let dead = false;
    let killed = false;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.on('message', (m: FromSandbox) => onMessage(m));
    proc.on('error', (err) => {
      if (dead) return;
      dead = true;
      onDeath(new SandboxCrashError(`sandbox process could not run (${err.message})`, { cause: err }));
    });
    proc.on('exit', (code, signal) => {
      void cleanup();
      if (dead || killed) return;
      dead = true;
      if (/heap limit|out of memory|Allocation failed/i.test(stderr)) {
        onDeath(
          new MemoryLimitError(
            `job exceeded its memory limit (maxOldGenerationSizeMb=${maxOldGenerationSizeMb}) and its sandbox was terminated`,
          ),
        );
      } else {
        const last = stderr.trim().split('\n').slice(-3).join(' | ');
        onDeath(
          new SandboxCrashError(
            `sandbox process exited (${signal ?? `code ${code}`}) mid-job: process.exit() or a crash in the processor${last ? ` (${last})` : ''}`,
          ),
        );
      }
    });
    const host: SandboxHost = {
      layers: cmd.layers,
      ...(proc.pid !== undefined ? { pid: proc.pid } : {}),
      post: (msg, _transfer, sent) => {
        // `sent` runs once the serialized copy left for the sandbox, or at once when it cannot
        // be sent: either way the caller zero-fills its bytes then.
        if (dead || !proc.connected) {
          sent?.();
          return;
        }
        proc.send(msg, () => sent?.());
      },
      onMessage: (fn) => (onMessage = fn),
      onDeath: (fn) => (onDeath = fn),
      setJob: (id) => (jobId = id),
      kill: async () => {
        killed = true;
        dead = true;
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
        await exited;
        await cleanup();
      },
    };
    const initMessage: SandboxInit = cmd.lazyProxy ? { ...processInit, lazyProxy: true } : processInit;
    proc.once('spawn', () => proc.send({ type: 'init', init: initMessage }));
    return await awaitReady(host, `sandbox process for ${init.jobType}`);
  } catch (err) {
    child?.kill('SIGKILL');
    await cleanup();
    throw err;
  }
}
