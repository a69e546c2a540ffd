/**
 * A process sandbox's host: its own OS process, started by the sandbox spawner (sandbox-spawner.ts)
 * from the command the supervisor builds (sandbox-boundary.ts), with an empty environment and no
 * inherited file descriptors, under Node's permission model, and on Linux inside bubblewrap's
 * namespaces with a private size-capped /tmp and no network but its egress proxy; in its own
 * cgroup with rlimits and a seccomp filter (resource-limits.ts). Everything it sends is read as
 * hostile frames (channel.ts); every limit is held here, outside it.
 */
import {
  mkdtempSync,
  rmSync,
  chmodSync,
  chownSync,
  copyFileSync,
  linkSync,
  mkdirSync,
  realpathSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  FleetError,
  MemoryLimitError,
  ProcessorLoadError,
  SandboxCrashError,
  SandboxSpawnerError,
  errorMessage,
} from '../errors.js';
import { spawnSandbox, type SandboxExit, type SpawnedSandbox } from './sandbox-spawner.js';
import { encodeFrame, FrameDecoder, isExitNotice } from './channel.js';
import {
  createSandboxCgroup,
  limitedCommand,
  type ResourceLayer,
  type SandboxCgroup,
  type SandboxResources,
} from './resource-limits.js';
import { seccompProgram } from './seccomp-filter.js';
import { EgressProxy, type EgressRefusal, type InjectOptions } from './egress-proxy.js';
import type { SandboxInit, ToSandbox } from './protocol.js';
import {
  processSandboxCommand,
  SANDBOX_EGRESS_SOCKET,
  SANDBOX_PROXY_PORT,
  type Egress,
  type OsLayer,
  SANDBOX_TMP,
} from './sandbox-boundary.js';
import { awaitReady, maxFrameFromSandbox, SANDBOX_ENTRY, type SandboxHost } from './sandbox-host.js';

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
  /** Open egress connections at once (descriptors the sandbox can make the supervisor hold). @defaultValue 64 */
  maxEgressConnections?: number;
  /** Request bytes the injecting proxy holds at once for this sandbox. @defaultValue 2 × injectMaxBodyBytes */
  maxEgressBufferedBytes?: number;
  /** Refused egress attempts per job; one more kills the sandbox (each is an audit record). @defaultValue 20 */
  maxEgressRefusals?: number;
  /** The kernel's caps (cgroup, rlimits, seccomp), as far as this host allows them. */
  resources?: { limits: SandboxResources; layer: ResourceLayer };
}

/** How long a process sandbox that sent its exit notice may take to end before it is killed. */
const EXIT_NOTICE_GRACE_MS = 5_000;
/** The uid and gid a sandbox runs as when a root supervisor has no OS layer to map it (nobody). */
export const SANDBOX_UID = 65534;

let reachableNode: string | null = null;
/**
 * The Node binary as a path `uid` can execute. Node often lives under a home directory other users
 * cannot enter (`/root/.cache/…`): then a hard link (or, across file systems, a copy) of it is
 * made once, in a directory of its own under the temp dir.
 */
function nodeReachableBy(uid: number): string {
  if (reachableNode) return reachableNode;
  const node = realpathSync(process.execPath);
  const open = (p: string, bits: number): boolean => {
    const st = statSync(p);
    return st.uid === uid || (st.mode & bits) === bits;
  };
  const parents: string[] = [];
  for (let d = path.dirname(node); ; d = path.dirname(d)) {
    parents.push(d);
    if (path.dirname(d) === d) break;
  }
  if (open(node, 0o005) && parents.every((d) => open(d, 0o001))) return (reachableNode = node);
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-node-'));
  chmodSync(dir, 0o755);
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  const target = path.join(dir, 'node');
  try {
    linkSync(node, target);
  } catch {
    copyFileSync(node, target);
    chmodSync(target, 0o755);
  }
  return (reachableNode = target);
}

/** Names each process sandbox's cgroup (below this supervisor's own `fleet-<pid>` directory). */
let sandboxSeq = 0;

export async function startProcessHost(
  init: SandboxInit,
  maxOldGenerationSizeMb: number,
  options: ProcessHostOptions,
): Promise<SandboxHost> {
  const os = options.osLayer.available;
  // One private directory per sandbox on the host where it has something there: its temp dir
  // (without the OS layer) or the egress socket. Mode 0700, removed with the sandbox. With the OS
  // layer and no egress there is nothing (its /tmp is a tmpfs of its own), and a `job` sandbox is
  // spared making and removing one.
  const hostDir = !os || options.egress !== 'none' ? mkdtempSync(path.join(tmpdir(), 'fleet-sandbox-')) : null;
  if (hostDir) chmodSync(hostDir, 0o700);
  const tmpDir = os || !hostDir ? SANDBOX_TMP : path.join(hostDir, 'tmp');
  if (!os) mkdirSync(tmpDir, { mode: 0o700 });
  let jobId: string | null = null;
  /** Egress refusals of the job running now (reset at each job). */
  let refusals = 0;
  /** Set once the process is gone or killed: nothing it sends or causes is acted on after. */
  let dead = false;
  /** Set once the host exists: reports a violation to the sandbox that owns this host. */
  let reportViolation: (problem: string, code: 'SANDBOX_PROTOCOL' | 'SANDBOX_LIMIT') => void = () => undefined;
  let proxy: EgressProxy | null = null;
  let spawned: SpawnedSandbox | null = null;
  let cgroup: SandboxCgroup | null = null;
  let cleaned: Promise<void> | null = null;
  // Never throws: clean-up runs from exit handlers, where a throw (EMFILE, EBUSY) would reach the
  // supervisor's event loop.
  const cleanup = (): Promise<void> =>
    (cleaned ??= (async () => {
      await proxy?.close().catch(() => undefined);
      try {
        if (hostDir) rmSync(hostDir, { recursive: true, force: true });
      } catch {
        // Left for the OS's temp cleaning: nothing in it outlives the sandbox's use.
      }
      await cgroup?.remove();
    })());
  const inject = options.inject;
  // Without namespaces to map it, a root supervisor's sandbox would run as root (and could, say,
  // lower the supervisor's CPU priority): it runs as nobody instead.
  const dropTo = !os && process.getuid?.() === 0 ? SANDBOX_UID : null;
  try {
    let caCertFile = options.inject?.ca.certFile;
    if (dropTo !== null && hostDir) {
      // The host dir stays the supervisor's (traversable); the temp dir inside it is the sandbox's.
      chmodSync(hostDir, 0o711);
      chownSync(tmpDir, dropTo, dropTo);
      // The CA certificate lives in the data dir, which nobody may read: the sandbox gets a copy.
      if (caCertFile) {
        const copy = path.join(hostDir, 'ca.pem');
        copyFileSync(caCertFile, copy);
        chmodSync(copy, 0o444);
        caCertFile = copy;
      }
    }
    let egressSocket: string | null = null;
    let proxyUrl: string | null = null;
    let processInit: SandboxInit = init;
    if (options.egress !== 'none') {
      // Each refusal is an audit record: past maxEgressRefusals in one job the sandbox is killed
      // (SANDBOX_LIMIT) rather than let it write the audit stream full.
      const maxRefusals = options.maxEgressRefusals ?? 20;
      /** Whether this refusal is reported (audited); past the cap the sandbox is killed instead. */
      const countRefusal = (): boolean => {
        // A killed sandbox's proxy may still be deciding: nothing of it is reported any more.
        if (dead) return false;
        refusals += 1;
        if (refusals <= maxRefusals) return true;
        // Reporting kills the sandbox (and resets the count): decided before it.
        if (refusals === maxRefusals + 1)
          reportViolation(
            `more than ${maxRefusals} refused egress attempts in one job (maxEgressRefusals)`,
            'SANDBOX_LIMIT',
          );
        return false;
      };
      proxy = new EgressProxy({
        egress: options.egress,
        fleetAddresses: options.fleetAddresses,
        onRefused: (r) => {
          if (countRefusal()) options.onEgressRefused?.({ ...r, jobId });
        },
        ...(options.maxEgressConnections ? { maxConnections: options.maxEgressConnections } : {}),
        ...(options.maxEgressBufferedBytes ? { maxBufferedBytes: options.maxEgressBufferedBytes } : {}),
        ...(inject
          ? {
              inject: {
                ...inject,
                currentJob: () => jobId,
                onRefused: (r) => {
                  if (countRefusal()) inject.onRefused({ ...r, jobType: init.jobType });
                },
              },
            }
          : {}),
      });
      if (os) {
        if (!hostDir) throw new Error('internal: a sandbox with egress has no host directory');
        egressSocket = path.join(hostDir, 'egress.sock');
        await proxy.listen(egressSocket);
        processInit = { ...init, egressForwarder: { port: SANDBOX_PROXY_PORT, socket: SANDBOX_EGRESS_SOCKET } };
        proxyUrl = `http://127.0.0.1:${SANDBOX_PROXY_PORT}`;
      } else {
        // Without namespaces the proxy is advisory: the process has the host's network too.
        proxyUrl = await proxy.listen(0);
      }
    }
    const resources = options.resources;
    if (resources?.layer.cgroups) cgroup = createSandboxCgroup(`sandbox-${++sandboxSeq}`, resources.limits);
    // The filter reaches bubblewrap on descriptor 4 (3 is the channel), opened fresh per sandbox
    // (bubblewrap reads it to its end) by the spawner.
    const seccomp = resources?.layer.seccomp === true && os;
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
      ...(caCertFile ? { caCertFile } : {}),
      ...(options.permissionModel === false ? { permissionModel: false } : {}),
      ...(dropTo !== null ? { nodePath: nodeReachableBy(dropTo) } : {}),
      ...(seccomp ? { seccompFd: 4 } : {}),
    });
    // Without the OS layer a root supervisor's sandbox drops to nobody: through setpriv after the
    // cgroup is entered when there are kernel limits to set up, else by spawn's own uid/gid.
    const dropInCommand = dropTo !== null && resources !== undefined && (cgroup !== null || resources.layer.rlimits);
    const limited = resources
      ? limitedCommand(cmd.command, cmd.args, resources.limits, {
          cgroup,
          rlimits: resources.layer.rlimits,
          dropToUid: dropInCommand ? dropTo : null,
        })
      : { command: cmd.command, args: cmd.args };
    const layers = [
      ...cmd.layers,
      ...(cgroup ? (['cgroup'] as const) : []),
      ...(resources?.layer.rlimits ? (['rlimits'] as const) : []),
    ];
    let proc: SpawnedSandbox;
    try {
      proc = await spawnSandbox({
        command: limited.command,
        args: limited.args,
        env: cmd.env,
        fd4File: seccomp ? seccompFile() : null,
        uid: dropTo !== null && !dropInCommand ? dropTo : null,
      });
    } catch (err) {
      if (err instanceof SandboxSpawnerError) throw err;
      throw new ProcessorLoadError(
        `sandbox process for ${init.jobType} failed to start: sandbox process could not run (${errorMessage(err)})`,
        { cause: err },
      );
    }
    spawned = proc;
    const channel = proc.channel;
    /** How the process ended, once it has. */
    let ended: SandboxExit | null = null;
    let onMessage: (msg: unknown) => void = () => undefined;
    let onViolation: (problem: string, code?: 'SANDBOX_PROTOCOL' | 'SANDBOX_LIMIT') => void = () => undefined;
    let onDeath: (err: FleetError) => void = () => undefined;
    let killed = false;
    const exited = proc.exited.then((exit) => void (ended = exit));
    const decoder = new FrameDecoder(maxFrameFromSandbox(init.maxResultBytes));
    let exitTimer: NodeJS.Timeout | undefined;
    /**
     * The sandbox is exiting while its read of the channel waits (fd-channel.ts): this end is
     * closed so that read returns and the process can end. One that announces its exit and lives
     * on is killed (its job, if any, fails as a crash), not left holding a channel nobody writes to.
     */
    const onExitNotice = (): void => {
      channel.end();
      exitTimer ??= setTimeout(() => {
        if (!ended) proc.kill();
      }, EXIT_NOTICE_GRACE_MS);
    };
    channel.on('data', (chunk: Buffer) => {
      if (dead) return;
      let messages: unknown[];
      try {
        messages = decoder.push(chunk);
      } catch (err) {
        channel.destroy();
        onViolation(errorMessage(err));
        return;
      }
      for (const m of messages) {
        if (dead) return;
        if (isExitNotice(m)) onExitNotice();
        else onMessage(m);
      }
    });
    channel.on('error', () => undefined);
    channel.on('close', () => decoder.discard());
    void proc.exited.then(({ code, signal, stderr, lost }) => {
      clearTimeout(exitTimer);
      void cleanup();
      if (dead || killed) return;
      dead = true;
      if (lost) {
        onDeath(lost);
        return;
      }
      // The kernel's word (the cgroup's OOM kill) first; the heap message is the sandbox's own
      // stderr, which it controls, so it counts only with the abort V8 ends a heap overrun with.
      if (cgroup?.oomKilled()) {
        onDeath(
          new MemoryLimitError(
            `the sandbox went past its memory limit (memoryLimitMb=${resources?.limits.memoryLimitMb}: heap, Buffers and /tmp together) and the kernel ended it`,
          ),
        );
      } else if (
        (signal === 'SIGABRT' || signal === 'SIGTRAP' || code === 134) &&
        /heap limit|out of memory|Allocation failed/i.test(stderr)
      ) {
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
    const send = (msg: ToSandbox, sent?: () => void): void => {
      // `sent` runs once the frame left for the sandbox, or at once when it cannot be sent:
      // either way the caller zero-fills its bytes then.
      if (dead || channel.destroyed || channel.writableEnded) {
        sent?.();
        return;
      }
      const frame = encodeFrame(msg);
      if (!frame.secret) {
        channel.write(frame.bytes);
        sent?.();
        return;
      }
      channel.write(frame.bytes, () => {
        frame.wipe();
        sent?.();
      });
    };
    const host: SandboxHost = {
      layers,
      pid: proc.pid,
      post: (msg, _transfer, sent) => send(msg, sent),
      onMessage: (fn) => (onMessage = fn),
      onViolation: (fn) => (onViolation = fn),
      onDeath: (fn) => (onDeath = fn),
      setJob: (id) => {
        // At a job's end its exchanges in flight are cut: nothing arrives for it later (unmasked).
        if (jobId !== null && id !== jobId) proxy?.endJob();
        if (id !== jobId) refusals = 0;
        if (id !== null && id !== jobId) cgroup?.resetPeak();
        jobId = id;
      },
      usage: () => cgroup?.usage() ?? null,
      kill: async () => {
        killed = true;
        dead = true;
        channel.destroy();
        if (!ended) proc.kill();
        await exited;
        await cleanup();
      },
    };
    reportViolation = (problem, code) => {
      if (!dead) onViolation(problem, code);
    };
    const initMessage: SandboxInit = cmd.lazyProxy ? { ...processInit, lazyProxy: true } : processInit;
    const ready = awaitReady(host, `sandbox process for ${init.jobType}`);
    send({ type: 'init', init: initMessage });
    return await ready;
  } catch (err) {
    spawned?.kill();
    await cleanup();
    throw err;
  }
}

let filterFile: string | null = null;
/** The seccomp filter, written once per process to a file of its own (mode 0400). */
export function seccompFile(): string {
  if (filterFile) return filterFile;
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-seccomp-'));
  const file = path.join(dir, 'filter.bpf');
  writeFileSync(file, seccompProgram(), { mode: 0o400 });
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return (filterFile = file);
}
