/**
 * What the kernel caps per process sandbox, outside it: a cgroup of its own (memory with swap off,
 * processes, CPU weight and an optional quota), rlimits (no core dumps, descriptors, file size),
 * and the seccomp filter (seccomp-filter.ts). `--max-old-space-size` caps only the V8 heap; these
 * cap what a sandbox's Buffers, threads, children, tmpfs pages and descriptors take from the host.
 *
 * cgroup v1 (each controller mounted on its own, as on this project's machines) and v2 (a delegated
 * subtree: systemd `Delegate=yes`, a container with its own cgroup namespace) are both handled; the
 * supervisor's own cgroup is the parent, so an outer limit (a container's) still applies.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmdirSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import { errnoCode, errorMessage } from '../errors.js';
import { seccompSupported } from './seccomp-filter.js';

/** The limits of one job type's sandboxes. */
export interface SandboxResources {
  /** Memory of the whole sandbox (heap, Buffers, native, its tmpfs pages, kernel memory). */
  memoryLimitMb: number;
  /** Processes and threads (Node alone runs about a dozen threads). */
  maxProcesses: number;
  /** Relative CPU share, 1–10000 (100: an equal share). */
  cpuWeight: number;
  /** Hard CPU cap in percent of one core; none when absent. */
  cpuQuotaPercent?: number;
  /** RLIMIT_NOFILE. */
  maxOpenFiles: number;
  /** RLIMIT_FSIZE: the largest file it may write. */
  maxFileSizeMb: number;
}

/** What this host can cap, found once per process. */
export interface ResourceLayer {
  cgroups: 'v1' | 'v2' | null;
  rlimits: boolean;
  seccomp: boolean;
  /** Why each missing part is missing, with the fix. */
  reasons: string[];
}

type Controller = 'memory' | 'pids' | 'cpu' | 'cpuacct';

interface CgroupRoots {
  version: 'v1' | 'v2';
  /** v1: one directory per controller; v2: one directory for all. */
  dirs: Partial<Record<Controller, string>>;
}

/** The shell that sets a sandbox's limits, then execs its command (POSIX `ulimit`: 512-byte blocks). */
const SHELL = '/bin/sh';

/** `ulimit` commands for a sandbox's rlimits (soft and hard alike: the sandbox cannot raise them). */
function ulimits(r: Pick<SandboxResources, 'maxOpenFiles' | 'maxFileSizeMb'>): string {
  return `ulimit -c 0 && ulimit -n ${r.maxOpenFiles} && ulimit -f ${r.maxFileSizeMb * 2048}`;
}

let roots: CgroupRoots | null = null;
let probed: ResourceLayer | null = null;

/** This process's cgroup path per controller (`/proc/self/cgroup`). */
function ownCgroups(): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const m = /^\d+:([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    const [, ctrls = '', where = '/'] = m;
    if (ctrls === '') out.set('', where);
    for (const c of ctrls.split(',')) if (c) out.set(c, where);
  }
  return out;
}

/** A directory of our own for the sandboxes' cgroups, below the supervisor's cgroup. */
function findRoots(): CgroupRoots {
  const own = ownCgroups();
  const base = '/sys/fs/cgroup';
  const ours = `fleet-${process.pid}`;
  if (existsSync(path.join(base, 'cgroup.controllers'))) {
    // v2: processes may not sit in a cgroup whose controllers are enabled for children, so the
    // sandboxes get a sibling subtree under the supervisor's parent when the supervisor's own
    // cgroup is not a delegated leaf we can split.
    const mine = path.join(base, own.get('') ?? '/');
    const dir = path.join(mine, ours);
    mkdirSync(dir);
    for (const c of ['memory', 'pids', 'cpu'])
      try {
        writeFileSync(path.join(mine, 'cgroup.subtree_control'), `+${c}`);
      } catch (err) {
        rmdirSync(dir);
        throw new Error(
          `cannot enable the ${c} controller below ${mine} (${errorMessage(err)}). Fix: run the supervisor in a delegated cgroup (systemd Delegate=yes, or a container with its own cgroup namespace).`,
        );
      }
    writeFileSync(path.join(dir, 'cgroup.subtree_control'), '+memory +pids +cpu');
    return { version: 'v2', dirs: { memory: dir, pids: dir, cpu: dir, cpuacct: dir } };
  }
  const dirs: Partial<Record<Controller, string>> = {};
  for (const c of ['memory', 'pids', 'cpu', 'cpuacct'] as const) {
    const mount = [path.join(base, c), path.join(base, 'cpu,cpuacct')].find((d) => existsSync(path.join(d, 'tasks')));
    if (!mount) {
      if (c === 'cpuacct') continue; // CPU time from cpuacct is a figure, not a limit
      throw new Error(`the cgroup v1 ${c} controller is not mounted under ${base}. Fix: mount it, or use cgroup v2.`);
    }
    const dir = path.join(mount, own.get(c) ?? own.get('cpu,cpuacct') ?? '/', ours);
    mkdirSync(dir, { recursive: true });
    dirs[c] = dir;
  }
  return { version: 'v1', dirs };
}

/**
 * Removes this process's sandbox cgroup roots at exit (synchronously: nothing can wait then). A
 * sandbox cgroup still there is removed if empty; one that is not is left for the next supervisor
 * on this host, which removes the cgroups of supervisors that are gone.
 */
function removeRoots(): void {
  for (const dir of new Set(Object.values(roots?.dirs ?? {})))
    try {
      for (const child of readdirSync(dir, { withFileTypes: true }))
        if (child.isDirectory())
          try {
            rmdirSync(path.join(dir, child.name));
          } catch {
            // still has a task
          }
      rmdirSync(dir);
    } catch {
      // left for the next supervisor's clean-up of stale cgroups
    }
}

/**
 * Finds, once per process, which caps this host allows: a cgroup subtree we may write, a shell's
 * `ulimit` for the rlimits, and the seccomp filter's architecture.
 */
export function probeResourceLimits(setting: 'auto' | 'required' | 'off'): ResourceLayer {
  if (setting === 'off')
    return { cgroups: null, rlimits: false, seccomp: false, reasons: ['supervisor.resourceLimits is "off"'] };
  if (probed) return probed;
  const reasons: string[] = [];
  let cgroups: ResourceLayer['cgroups'] = null;
  if (process.platform !== 'linux')
    reasons.push(`cgroups, rlimits and seccomp are Linux-only (this is ${process.platform})`);
  else {
    try {
      roots = findRoots();
      cgroups = roots.version;
      removeStale(Object.values(roots.dirs));
      process.once('exit', removeRoots);
    } catch (err) {
      reasons.push(
        `cgroups: ${errorMessage(err).replace(/^EACCES.*$/, 'no write access to the cgroup tree')}. Fix: run the supervisor as root, or with a delegated cgroup subtree (systemd Delegate=yes; Docker: see docs/operations.md#deploy).`,
      );
    }
  }
  let rlimits = false;
  if (process.platform === 'linux')
    try {
      execFileSync(SHELL, ['-c', ulimits({ maxOpenFiles: 64, maxFileSizeMb: 1 })], { stdio: 'ignore', timeout: 5000 });
      rlimits = true;
    } catch (err) {
      reasons.push(
        `rlimits: ${SHELL} cannot lower them with ulimit here (${errorMessage(err)}). Fix: install a POSIX shell as ${SHELL}.`,
      );
    }
  const seccomp = seccompSupported();
  if (!seccomp && process.platform === 'linux')
    reasons.push(`seccomp: the filter is written for x86_64 (this is ${process.arch}); sandboxes run without it`);
  probed = { cgroups, rlimits, seccomp, reasons };
  return probed;
}

/**
 * The CPU weight of all sandboxes together against the supervisor, from `supervisor.sandboxNice`.
 * Inside a cgroup a nice value only orders the cgroup's own tasks: without this the sandboxes'
 * group would weigh as much as a nice-0 task and preempt the supervisor's dispatch and lock
 * renewal, which `sandboxNice` exists to keep ahead. Work-conserving: idle cycles still go to jobs.
 */
export function weighSandboxes(nice: number): void {
  if (!roots?.dirs.cpu) return;
  // The kernel's nice-to-weight table is 1024 / 1.25^nice.
  const shares = Math.max(2, Math.round(1024 / 1.25 ** nice));
  try {
    if (roots.version === 'v1') writeFileSync(path.join(roots.dirs.cpu, 'cpu.shares'), String(shares));
    else writeFileSync(path.join(roots.dirs.cpu, 'cpu.weight'), String(Math.max(1, Math.round((shares * 100) / 1024))));
  } catch {
    // not writable: sandboxes then weigh as one nice-0 task
  }
}

/** Usage of one sandbox's cgroup: CPU time since the last reset and the peak memory. */
export interface CgroupUsage {
  cpuMs: number | null;
  peakMemoryBytes: number | null;
}

/** One sandbox's cgroup. */
export interface SandboxCgroup {
  /** The files a process writes its pid to, to enter the cgroup. */
  readonly procsFiles: readonly string[];
  /** Whether the kernel's OOM killer acted in it (the sandbox went past memoryLimitMb). */
  oomKilled(): boolean;
  /** CPU time and peak memory since the last `resetPeak()`. */
  usage(): CgroupUsage;
  resetPeak(): void;
  /**
   * Kills whatever still runs in it (a sandbox's processes die with its PID namespace, but not in
   * the same instant as bubblewrap), waits until it is empty, and removes it. Never throws.
   */
  remove(): Promise<void>;
}

function read(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/**
 * A cgroup file a sandbox's every job reads (or resets), kept open for the sandbox's life: one
 * `pread` from offset 0 regenerates its contents, where `readFileSync` costs open, fstat, read and
 * close each time (a pool job read or reset four of them: ~85 µs of the supervisor's CPU per job).
 */
function keptFile(file: string, bytes = 64): { read(): string | null; write(v: string): void; close(): void } {
  let fd: number | null = null;
  const buf = Buffer.alloc(bytes);
  return {
    read() {
      try {
        fd ??= openSync(file, 'r+');
        return buf.toString('utf8', 0, readSync(fd, buf, 0, bytes, 0));
      } catch {
        return null;
      }
    },
    write(v) {
      fd ??= openSync(file, 'r+');
      writeSync(fd, v, 0);
    },
    close() {
      if (fd !== null) closeSync(fd);
      fd = null;
    },
  };
}

/** Creates the cgroup of one sandbox with the type's limits. */
export function createSandboxCgroup(id: string, r: SandboxResources): SandboxCgroup {
  if (!roots) throw new Error('probeResourceLimits() found no cgroup tree');
  const { version, dirs } = roots;
  const dirOf = (c: Controller): string | null => (dirs[c] ? path.join(dirs[c], id) : null);
  const made = [...new Set((['memory', 'pids', 'cpu', 'cpuacct'] as const).flatMap((c) => dirOf(c) ?? []))];
  for (const d of made) mkdirSync(d);
  const set = (c: Controller, file: string, value: string | number): void =>
    writeFileSync(path.join(dirOf(c) ?? '', file), String(value));
  const bytes = r.memoryLimitMb * 1024 * 1024;
  try {
    if (version === 'v1') {
      set('memory', 'memory.limit_in_bytes', bytes);
      // Swap off: the memory+swap limit equal to the memory limit (absent without swap accounting).
      if (existsSync(path.join(dirOf('memory') ?? '', 'memory.memsw.limit_in_bytes')))
        set('memory', 'memory.memsw.limit_in_bytes', bytes);
      set('memory', 'memory.swappiness', 0);
      // cgroup v1 charges TCP buffers to a cgroup only once its TCP limit is set (v2 always does):
      // without it a sandbox parks hundreds of MB in loopback sockets of its own network namespace.
      if (existsSync(path.join(dirOf('memory') ?? '', 'memory.kmem.tcp.limit_in_bytes')))
        set('memory', 'memory.kmem.tcp.limit_in_bytes', bytes);
      set('pids', 'pids.max', r.maxProcesses);
      set('cpu', 'cpu.shares', Math.max(2, Math.round((r.cpuWeight * 1024) / 100)));
      if (r.cpuQuotaPercent) {
        set('cpu', 'cpu.cfs_period_us', 100_000);
        set('cpu', 'cpu.cfs_quota_us', r.cpuQuotaPercent * 1000);
      }
    } else {
      set('memory', 'memory.max', bytes);
      set('memory', 'memory.swap.max', 0);
      set('pids', 'pids.max', r.maxProcesses);
      set('cpu', 'cpu.weight', r.cpuWeight);
      if (r.cpuQuotaPercent) set('cpu', 'cpu.max', `${r.cpuQuotaPercent * 1000} 100000`);
    }
  } catch (err) {
    for (const d of made) rmdirSync(d);
    throw err;
  }
  const procsFiles = made.map((d) => path.join(d, 'cgroup.procs'));
  let cpuBase = 0;
  const cpuFile =
    version === 'v1'
      ? keptFile(path.join(dirOf('cpuacct') ?? '', 'cpuacct.usage'))
      : keptFile(path.join(dirOf('cpu') ?? '', 'cpu.stat'), 1024);
  const peakFile = keptFile(
    path.join(dirOf('memory') ?? '', version === 'v1' ? 'memory.max_usage_in_bytes' : 'memory.peak'),
  );
  const cpuNs = (): number | null => {
    const t = cpuFile.read();
    if (version === 'v1') return t === null ? null : Number(t);
    const m = /usage_usec (\d+)/.exec(t ?? '');
    return m?.[1] ? Number(m[1]) * 1000 : null;
  };
  return {
    procsFiles,
    oomKilled: () => {
      const text =
        version === 'v1'
          ? read(path.join(dirOf('memory') ?? '', 'memory.oom_control'))
          : read(path.join(dirOf('memory') ?? '', 'memory.events'));
      return Number(/oom_kill (\d+)/.exec(text ?? '')?.[1] ?? 0) > 0;
    },
    usage: () => {
      const ns = cpuNs();
      const peak = peakFile.read();
      return {
        cpuMs: ns === null ? null : (ns - cpuBase) / 1e6,
        peakMemoryBytes: peak === null ? null : Number(peak),
      };
    },
    resetPeak: () => {
      cpuBase = cpuNs() ?? 0;
      if (version === 'v1')
        try {
          peakFile.write('0');
        } catch {
          // not resettable here: the peak then covers the sandbox's life
        }
    },
    remove: async () => {
      cpuFile.close();
      peakFile.close();
      await emptyAndRemove(made);
    },
  };
}

/** The pids in a cgroup directory (empty when it is gone). */
function pidsIn(dir: string): number[] {
  return (read(path.join(dir, 'cgroup.procs')) ?? '').split('\n').filter(Boolean).map(Number);
}

/**
 * SIGKILLs what is left in the directories, waits (up to 5 s) until they are empty, removes them.
 * They are one sandbox's cgroup in each hierarchy, and hold the same processes (its shell entered
 * them all before it started anything, and nothing inside can leave): one list of pids per round
 * is enough. The waits double from 5 ms (a killed sandbox is usually gone within a few; a starved
 * one, at its low CPU priority on a busy host, can take hundreds): a fixed 20 ms poll cost a
 * sandbox that took half a second to die 25 rounds of reads, kills and failing rmdirs on the
 * supervisor's thread. What is still there after 5 s (a sandbox with a large memory to give back
 * on a loaded host) is not given up: it is retried once a second in the background, for up to 10
 * minutes, so the job's end is not held up and no empty cgroup is left behind.
 */
async function emptyAndRemove(dirs: readonly string[]): Promise<void> {
  let left = [...dirs];
  const deadline = Date.now() + 5000;
  for (let waitMs = 5; left.length; waitMs = Math.min(waitMs * 2, 320)) {
    left = killAndRemove(left);
    if (!left.length) return;
    if (Date.now() > deadline) return reapLater(left);
    await new Promise((r) => setTimeout(r, waitMs));
  }
}

/** One round: SIGKILL what is in them (one pid list: they hold the same processes), remove them; returns the ones still there. */
function killAndRemove(dirs: readonly string[]): string[] {
  const first = dirs[0];
  if (first !== undefined)
    for (const pid of pidsIn(first))
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
  return dirs.filter((d) => {
    try {
      rmdirSync(d);
      return false;
    } catch (err) {
      return errnoCode(err) !== 'ENOENT';
    }
  });
}

function reapLater(dirs: readonly string[], rounds = 600): void {
  const timer = setTimeout(() => {
    const left = killAndRemove(dirs);
    if (left.length && rounds > 1) reapLater(left, rounds - 1);
  }, 1000);
  // A supervisor that is otherwise done exits; a later supervisor's start removes what is stale.
  timer.unref();
}

/**
 * The sandbox cgroups of supervisors that are gone (SIGKILL, a crash): their `fleet-<pid>`
 * directories, emptied and removed, so nothing accumulates in the host's cgroup tree.
 */
function removeStale(dirs: readonly string[]): void {
  for (const dir of dirs) {
    const parent = path.dirname(dir);
    let names: string[];
    try {
      names = readdirSync(parent);
    } catch {
      continue;
    }
    for (const name of names) {
      const pid = Number(/^fleet-(\d+)$/.exec(name)?.[1] ?? NaN);
      if (!Number.isInteger(pid) || pid === process.pid || alive(pid)) continue;
      const stale = path.join(parent, name);
      // A supervisor in another PID namespace sharing this tree looks dead from here: only what
      // has not changed for a minute is taken for stale.
      try {
        if (Date.now() - statSync(stale).mtimeMs < 60_000) continue;
        for (const child of readdirSync(stale, { withFileTypes: true }))
          if (child.isDirectory() && pidsIn(path.join(stale, child.name)).length === 0)
            rmdirSync(path.join(stale, child.name));
        rmdirSync(stale);
      } catch {
        // something still runs there: left alone
      }
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
}

/**
 * The command that starts a sandbox inside its limits: a shell that moves itself into the cgroup
 * (so nothing the sandbox starts runs outside it, not even for a moment), lowers the rlimits with
 * its `ulimit` built-in, and execs the sandbox's own command: one small exec before bubblewrap
 * (a `prlimit` exec after it cost another ~1.3 ms of CPU per sandbox start). Paths are the
 * supervisor's own (hex ids); the numbers are the type's.
 */
export function limitedCommand(
  command: string,
  args: readonly string[],
  r: SandboxResources,
  options: { cgroup: SandboxCgroup | null; rlimits: boolean; dropToUid: number | null },
): { command: string; args: string[] } {
  // The cgroup is entered (which takes the supervisor's rights) and the rlimits are lowered (which
  // any uid may do, and which the uid drop keeps), then the uid drops (util-linux setpriv), then
  // the sandbox starts.
  const chain = [
    ...(options.dropToUid !== null
      ? ['setpriv', `--reuid=${options.dropToUid}`, `--regid=${options.dropToUid}`, '--clear-groups', '--']
      : []),
    command,
    ...args,
  ];
  const steps = [
    ...(options.cgroup?.procsFiles.map((f) => `echo $$ > ${f}`) ?? []),
    ...(options.rlimits ? [ulimits(r)] : []),
  ];
  if (!steps.length) return { command: chain[0] ?? command, args: chain.slice(1) };
  return { command: SHELL, args: ['-c', `${steps.join(' && ')} && exec "$@"`, 'sandbox', ...chain] };
}
