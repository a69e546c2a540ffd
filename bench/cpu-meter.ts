/**
 * CPU time of everything a benchmark run starts, for the figure that stays stable on a shared
 * 2-core machine: CPU milliseconds per job, summed over every process that works on it (this
 * process, which is the producer and the supervisor or BullMQ's worker; its sandboxes or BullMQ's
 * child processes, bubblewrap included; Redis; the Vault and KMS servers of the secret runs).
 *
 * Where this process may create a cgroup (cgroup v1 `cpuacct`, or v2), it moves itself into one of
 * its own before it starts anything, so every descendant is accounted there by the kernel, also
 * those killed before anyone reaps them (a `job` sandbox ends with SIGKILL). Elsewhere the figure
 * comes from `/proc`: this process with its reaped children, plus each live descendant; a
 * descendant killed and reparented before it was reaped is then missed (`source: "proc"` says so).
 */
import { mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';

/** CPU milliseconds (user + system) so far. */
export interface CpuReading {
  /** Every process of the run: this one and all its descendants. */
  totalMs: number;
  /** This process alone (producer, supervisor or BullMQ worker, and the bench's own bookkeeping). */
  selfMs: number;
  /** The run's Redis server. */
  redisMs: number;
}

/** CPU per job of one contender, in milliseconds: the whole, and where it went. */
export interface CpuPerJob {
  totalMs: number;
  /** This process: the supervisor (or BullMQ's worker) and the producer. */
  supervisorMs: number;
  redisMs: number;
  /** Everything else: sandboxes (bubblewrap included), BullMQ's child processes, secret servers. */
  sandboxesMs: number;
}

export interface CpuMeter {
  readonly source: 'cgroup-v1' | 'cgroup-v2' | 'proc';
  read(): CpuReading;
  /**
   * Moves this process back to where it was and removes the cgroup (call last), waiting up to
   * 5 s for the run's last children (a server stopped with SIGTERM) to leave it.
   */
  release(): Promise<void>;
}

// USER_HZ: 100 on every Linux architecture Node runs on (sysconf(_SC_CLK_TCK)).
const TICK_MS = 10;

/** utime + stime (+ cutime + cstime with `children`) of one process, in ms; 0 once it is gone. */
function procCpuMs(pid: number | 'self', children: boolean): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces and parentheses): state is field 3.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(f[11]) + Number(f[12]) + (children ? Number(f[13]) + Number(f[14]) : 0);
    return ticks * TICK_MS;
  } catch {
    return 0;
  }
}

function childPids(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`))
      for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' '))
        if (c.trim()) out.push(Number(c));
  } catch {
    /* exited */
  }
  return out;
}

function descendants(pid: number): number[] {
  const out: number[] = [];
  const stack = childPids(pid);
  while (stack.length) {
    const p = stack.pop()!;
    out.push(p);
    stack.push(...childPids(p));
  }
  return out;
}

/** The pid of this process's `redis-server` child (the embedded one), if any. */
function redisPid(): number | null {
  for (const p of childPids(process.pid)) {
    try {
      if (readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'redis-server') return p;
    } catch {
      /* exited */
    }
  }
  return null;
}

function ownCgroup(controller: string): string | null {
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const [, ctrls = '', where] = line.split(':');
    if (where !== undefined && (controller === '' ? ctrls === '' : ctrls.split(',').includes(controller))) return where;
  }
  return null;
}

/** A cgroup of this run's own; null where none can be made (not root, no delegation). */
function makeCgroup(): { version: 'v1' | 'v2'; dir: string; parent: string; usageMs(): number } | null {
  const base = '/sys/fs/cgroup';
  const name = `fleet-bench-${process.pid}`;
  const attempts: { version: 'v1' | 'v2'; mount: string; controller: string }[] = [
    { version: 'v1', mount: path.join(base, 'cpuacct'), controller: 'cpuacct' },
    { version: 'v1', mount: path.join(base, 'cpu,cpuacct'), controller: 'cpuacct' },
    { version: 'v2', mount: base, controller: '' },
  ];
  for (const a of attempts) {
    const file = a.version === 'v1' ? 'cpuacct.usage' : 'cgroup.controllers';
    if (!existsSync(path.join(a.mount, file))) continue;
    const own = ownCgroup(a.controller);
    if (own === null) continue;
    const parent = path.join(a.mount, own);
    const dir = path.join(parent, name);
    try {
      mkdirSync(dir);
      writeFileSync(path.join(dir, 'cgroup.procs'), String(process.pid));
    } catch {
      try {
        rmdirSync(dir);
      } catch {
        /* never made */
      }
      continue;
    }
    const usageMs =
      a.version === 'v1'
        ? () => Number(readFileSync(path.join(dir, 'cpuacct.usage'), 'utf8')) / 1e6
        : () => Number(/usage_usec (\d+)/.exec(readFileSync(path.join(dir, 'cpu.stat'), 'utf8'))?.[1] ?? NaN) / 1e3;
    return { version: a.version, dir, parent, usageMs };
  }
  return null;
}

/** Removes a cgroup and the (empty) cgroups below it: the supervisors' sandbox cgroup roots. */
function removeEmpty(dir: string): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeEmpty(path.join(dir, e.name));
  rmdirSync(dir);
}

/** Starts accounting; call before starting Redis or anything else the run measures. */
export function startCpuMeter(): CpuMeter {
  const cg = process.platform === 'linux' ? makeCgroup() : null;
  let redis: number | null = null;
  const redisMs = (): number => {
    redis ??= redisPid();
    return redis === null ? 0 : procCpuMs(redis, true);
  };
  const selfMs = (): number => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  if (cg)
    return {
      source: cg.version === 'v1' ? 'cgroup-v1' : 'cgroup-v2',
      read: () => ({ totalMs: cg.usageMs(), selfMs: selfMs(), redisMs: redisMs() }),
      release: async () => {
        try {
          writeFileSync(path.join(cg.parent, 'cgroup.procs'), String(process.pid));
        } catch {
          return; // this process could not leave it: nothing can be removed
        }
        for (let waited = 0; ; waited += 50) {
          try {
            removeEmpty(cg.dir);
            return;
          } catch {
            // A child still in it (still exiting): try again, then leave it to the host's clean-up.
            if (waited >= 5000) return;
            await new Promise((r) => setTimeout(r, 50));
          }
        }
      },
    };
  return {
    source: 'proc',
    read: () => ({
      totalMs: procCpuMs('self', true) + descendants(process.pid).reduce((a, p) => a + procCpuMs(p, true), 0),
      selfMs: selfMs(),
      redisMs: redisMs(),
    }),
    release: () => Promise.resolve(),
  };
}

/** CPU per job between two readings. */
export function cpuPerJob(from: CpuReading, to: CpuReading, jobs: number): CpuPerJob {
  const r = (n: number): number => Math.round((n / jobs) * 1000) / 1000;
  const total = to.totalMs - from.totalMs;
  const self = to.selfMs - from.selfMs;
  const redis = to.redisMs - from.redisMs;
  return {
    totalMs: r(total),
    supervisorMs: r(self),
    redisMs: r(redis),
    sandboxesMs: r(Math.max(0, total - self - redis)),
  };
}
