/**
 * Process sandboxes are started by a spawner: a small Node process (spawner-main.ts) the supervisor
 * starts once, which forks in its place. `fork()` costs a process CPU in proportion to its memory
 * (its page tables are copied, then every page it writes takes a fault until the child has exec'd),
 * and the child pays again tearing the copy down: a supervisor at 230 MB paid ~3 ms more per sandbox
 * start than one at 60 MB, on its main thread, and a `job` sandbox starts once per job. The
 * spawner stays at the size of a bare Node.
 *
 * What it does is only the fork and exec: the command (the cgroup-entering shell, bubblewrap, Node)
 * and its environment are built here, by the supervisor; the sandbox's channel (its fd 3, one end
 * of a socket pair) comes back over the spawner's IPC channel, so the supervisor reads and writes
 * the sandbox directly, as before. Every limit stays the supervisor's: the cgroup, the rlimits set
 * by the shell, the timeout's kill (through the spawner, and its cgroup emptied by the supervisor
 * itself).
 *
 * When the spawner dies, the sandboxes it started go with it (bubblewrap's `--die-with-parent`; the
 * supervisor kills any left by pid): their jobs fail with `SANDBOX_SPAWNER_DIED` (retried), and the
 * next sandbox starts a new spawner. The supervisor itself carries on.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { Socket } from 'node:net';
import { SandboxSpawnerError } from '../errors.js';
import { compiledPath } from '../runtime-path.js';

/** The spawner's own entry (compiled). */
export const SPAWNER_MAIN = compiledPath(import.meta.url, './spawner-main.js');

/** How long a kill waits for the spawner's report of the exit before the supervisor kills by pid. */
const KILL_REPORT_MS = 5_000;
/** How long a start waits for the spawner's answer before the spawner is taken for dead (and replaced). */
const SPAWN_ANSWER_MS = 30_000;

/** What the supervisor asks of its spawner. */
export type SpawnerRequest =
  | {
      type: 'spawn';
      id: number;
      command: string;
      args: string[];
      env: Record<string, string>;
      /** A file the spawner opens and hands the sandbox as its fd 4 (the seccomp filter). */
      fd4File: string | null;
      /** The uid and gid to run as (a root supervisor's sandbox without the OS layer). */
      uid: number | null;
    }
  | { type: 'kill'; id: number };

/** What the spawner answers. `spawned` carries the sandbox's channel as the message's handle. */
export type SpawnerReply =
  | { type: 'spawned'; id: number; pid: number }
  | { type: 'failed'; id: number; message: string }
  | { type: 'exit'; id: number; code: number | null; signal: NodeJS.Signals | null; stderr: string };

/** How a sandbox process ended. */
export interface SandboxExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last 4000 characters it wrote to stderr (Node's own fatal errors). */
  stderr: string;
  /** Set when it ended because its spawner died: the error its job fails with. */
  lost?: SandboxSpawnerError;
}

/** A started sandbox process. */
export interface SpawnedSandbox {
  readonly pid: number;
  /** The supervisor's end of the sandbox's channel (fd 3 in the sandbox). */
  readonly channel: Socket;
  /** Resolves once, when the process has ended. */
  readonly exited: Promise<SandboxExit>;
  /** SIGKILLs it (through the spawner, which reaps it; by pid when there is no spawner any more). */
  kill(): void;
}

export interface SpawnOptions {
  command: string;
  args: string[];
  env: Record<string, string>;
  fd4File: string | null;
  uid: number | null;
}

/** A sandbox of this spawner's, from the request until its exit. */
interface Live {
  pid: number | null;
  readonly exited: Promise<SandboxExit>;
  settle(exit: SandboxExit): void;
  kill(): void;
  /** Set until the spawner answered the request. */
  starting: { resolve: (s: SpawnedSandbox) => void; reject: (e: Error) => void } | null;
}

/** One spawner process and the sandboxes it started. */
class Spawner {
  readonly #child: ChildProcess;
  readonly #live = new Map<number, Live>();
  #seq = 0;
  #gone: SandboxSpawnerError | null = null;

  constructor(onGone: () => void) {
    // Its own entry, no flags of the supervisor's (a debugger, a test runner's loader), and none of
    // its environment but PATH (bubblewrap is found by name). It runs as the supervisor's user,
    // outside every sandbox, so it is hardened as the supervisor is: a SIGUSR1 from anything running
    // as that user must not open the V8 inspector in it.
    this.#child = fork(SPAWNER_MAIN, [], {
      execArgv: ['--disable-sigusr1'],
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      serialization: 'json',
    });
    this.#child.on('message', (msg: SpawnerReply, handle: unknown) => this.#reply(msg, handle));
    // Failing to start or to be signalled ends in 'exit' too (or leaves it running): nothing to add.
    this.#child.on('error', () => undefined);
    this.#child.once('exit', (code, signal) => {
      onGone();
      this.#lose(
        new SandboxSpawnerError(
          `the sandbox spawner (pid ${this.#child.pid}) exited (${signal ?? `code ${code}`}) and took the sandboxes it had started with it`,
        ),
      );
    });
    this.#holdWhileBusy();
  }

  spawn(options: SpawnOptions): Promise<SpawnedSandbox> {
    if (this.#gone) return Promise.reject(this.#gone);
    const id = ++this.#seq;
    let resolveExit: (exit: SandboxExit) => void = () => undefined;
    const live: Live = {
      pid: null,
      exited: new Promise<SandboxExit>((resolve) => (resolveExit = resolve)),
      settle: (exit) => {
        if (!this.#live.delete(id)) return;
        this.#holdWhileBusy();
        resolveExit(exit);
      },
      kill: () => {
        if (!this.#live.has(id)) return;
        if (!this.#send({ type: 'kill', id })) {
          // Its channel is closing: the spawner's exit settles every sandbox it had.
          killPid(live.pid);
          return;
        }
        // The spawner kills and reaps it, and reports the exit. Should that report not come (a
        // spawner that hangs), the supervisor kills it itself and does not wait any longer: until
        // it is reaped, that pid is still the sandbox's.
        setTimeout(() => {
          if (!this.#live.has(id)) return;
          killPid(live.pid);
          live.settle({ code: null, signal: 'SIGKILL', stderr: '' });
        }, KILL_REPORT_MS).unref();
      },
      starting: null,
    };
    const started = new Promise<SpawnedSandbox>((resolve, reject) => (live.starting = { resolve, reject }));
    // A spawner that does not answer is killed: its exit fails what it had, and the next start gets a new one.
    const answer = setTimeout(() => {
      if (live.starting) this.kill();
    }, SPAWN_ANSWER_MS);
    void started.then(
      () => clearTimeout(answer),
      () => clearTimeout(answer),
    );
    this.#live.set(id, live);
    this.#holdWhileBusy();
    if (!this.#send({ type: 'spawn', id, ...options })) {
      this.#lose(new SandboxSpawnerError('the sandbox spawner cannot be reached (its channel is closed)'));
      this.kill();
    }
    return started;
  }

  #reply(msg: SpawnerReply, handle: unknown): void {
    const live = this.#live.get(msg.id);
    if (!live) return;
    const starting = live.starting;
    live.starting = null;
    if (msg.type === 'spawned') {
      live.pid = msg.pid;
      if (handle instanceof Socket)
        starting?.resolve({ pid: msg.pid, channel: handle, exited: live.exited, kill: live.kill });
      else {
        // The channel did not come across: the sandbox is of no use.
        starting?.reject(new Error('the sandbox spawner started the process but could not hand over its channel'));
        live.kill();
      }
    } else if (msg.type === 'failed') {
      starting?.reject(new Error(msg.message));
      live.settle({ code: null, signal: null, stderr: '' });
    } else live.settle({ code: msg.code, signal: msg.signal, stderr: msg.stderr });
  }

  #send(msg: SpawnerRequest): boolean {
    if (this.#gone || !this.#child.connected) return false;
    try {
      this.#child.send(msg);
      return true;
    } catch {
      return false;
    }
  }

  /** The spawner is gone: every sandbox it started is ended, and ends its job with `err`. */
  #lose(err: SandboxSpawnerError): void {
    this.#gone ??= err;
    for (const live of [...this.#live.values()]) {
      live.starting?.reject(err);
      live.starting = null;
      // With bubblewrap they died with the spawner (--die-with-parent); without it one outlives it.
      killPid(live.pid);
      live.settle({ code: null, signal: null, stderr: '', lost: err });
    }
  }

  /** The spawner keeps this process alive only while a sandbox of its is starting or running. */
  #holdWhileBusy(): void {
    if (this.#live.size) {
      this.#child.ref();
      this.#child.channel?.ref();
    } else {
      this.#child.unref();
      this.#child.channel?.unref();
    }
  }

  kill(): void {
    this.#child.kill('SIGKILL');
  }

  /** Resolves once the spawner process has exited (held: the exit is awaited). */
  exited(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return Promise.resolve();
    this.#child.ref();
    return new Promise((resolve) => this.#child.once('exit', () => resolve()));
  }
}

function killPid(pid: number | null): void {
  if (pid === null) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

let current: Spawner | null = null;
let exitHooked = false;

/**
 * Starts one sandbox process through this process's spawner (started on first use, and again after
 * it died). Resolves once the process runs, with its channel; rejects when it could not be started.
 */
export function spawnSandbox(options: SpawnOptions): Promise<SpawnedSandbox> {
  if (!current) {
    const spawner = new Spawner(() => {
      if (current === spawner) current = null;
    });
    if (!exitHooked) process.once('exit', () => current?.kill());
    exitHooked = true;
    current = spawner;
  }
  return current.spawn(options);
}

/**
 * Ends this process's spawner, and with it any sandbox it still runs (for a process that is done
 * with sandboxes before it exits: the bench, which then removes the cgroup it measured in). A later
 * sandbox starts a new one.
 */
export async function stopSpawner(): Promise<void> {
  const spawner = current;
  if (!spawner) return;
  current = null;
  spawner.kill();
  await spawner.exited();
}
