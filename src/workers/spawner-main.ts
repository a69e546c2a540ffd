/**
 * The sandbox spawner's own process (see sandbox-spawner.ts): it starts the commands its supervisor
 * sends, hands each one's channel (its fd 3) back over the IPC channel, reports each exit with the
 * tail of its stderr, and kills on request. It decides nothing: the command, its environment and
 * its limits are the supervisor's. When the supervisor goes (its channel closes), it kills what it
 * started and exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { SpawnerReply, SpawnerRequest } from './sandbox-spawner.js';

const children = new Map<number, ChildProcess>();

/** O_CLOEXEC as /proc/<pid>/fdinfo shows it in a descriptor's flags (octal, Linux). */
const O_CLOEXEC = 0o2000000;

/**
 * Closes the descriptors this process inherited without close-on-exec (a pipe of whatever started
 * the supervisor, socket activation's LISTEN_FDS, a log file): a child gets every such descriptor
 * whatever its stdio says, so each sandbox would hold it, outside its channel and its masking.
 * Node's and libuv's own descriptors are close-on-exec, and so are left; so are stdio and the IPC
 * channel. Without /proc (not Linux) there is nothing to read, and nothing is closed.
 */
function closeInheritedDescriptors(): void {
  const keep = new Set([0, 1, 2]);
  const ipc: unknown = Reflect.get(process.channel ?? {}, 'fd');
  if (typeof ipc === 'number') keep.add(ipc);
  let names: string[];
  try {
    names = readdirSync('/proc/self/fd');
  } catch {
    return;
  }
  for (const name of names) {
    const fd = Number(name);
    if (!Number.isInteger(fd) || keep.has(fd)) continue;
    try {
      const flags = parseInt(/^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1] ?? '', 8);
      if (!Number.isNaN(flags) && (flags & O_CLOEXEC) === 0) closeSync(fd);
    } catch {
      // gone already (the directory's own descriptor), or not ours to read
    }
  }
}
closeInheritedDescriptors();

function reply(msg: SpawnerReply, handle?: Socket): void {
  if (!process.connected) return;
  // A handle is moved, not copied: the spawner's end is closed once it has been sent.
  process.send?.(msg, handle, undefined, () => undefined);
}

function start(req: Extract<SpawnerRequest, { type: 'spawn' }>): void {
  let child: ChildProcess;
  let fd4: number | null = null;
  try {
    // Opened fresh for each sandbox: bubblewrap reads the seccomp filter to its end.
    if (req.fd4File) fd4 = openSync(req.fd4File, 'r');
    child = spawn(req.command, req.args, {
      env: req.env,
      // stdin closed, stdout ignored (processors' output goes over the channel, masked), stderr kept
      // for Node's own fatal errors, fd 3 the channel (a socket pair); nothing else is inherited.
      stdio: ['ignore', 'ignore', 'pipe', 'pipe', ...(fd4 !== null ? [fd4] : [])],
      detached: false,
      ...(req.uid !== null ? { uid: req.uid, gid: req.uid } : {}),
    });
  } catch (err) {
    reply({ type: 'failed', id: req.id, message: err instanceof Error ? err.message : String(err) });
    return;
  } finally {
    if (fd4 !== null) closeSync(fd4);
  }
  children.set(req.id, child);
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString('utf8')).slice(-4000)));
  child.stderr?.on('error', () => undefined);
  let spawned = false;
  child.once('spawn', () => {
    spawned = true;
    // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- stdio[3] is 'pipe': libuv makes it a socket pair, a net.Socket here
    reply({ type: 'spawned', id: req.id, pid: child.pid ?? -1 }, child.stdio[3] as Socket);
  });
  child.on('error', (err) => {
    if (spawned) return;
    children.delete(req.id);
    reply({ type: 'failed', id: req.id, message: err.message });
  });
  child.once('exit', (code, signal) => {
    children.delete(req.id);
    if (spawned) reply({ type: 'exit', id: req.id, code, signal, stderr });
  });
}

process.on('message', (msg: SpawnerRequest) => {
  if (msg.type === 'spawn') start(msg);
  else if (msg.type === 'kill') children.get(msg.id)?.kill('SIGKILL');
});
/** Kills what it started and exits: its supervisor is gone. */
function end(): never {
  for (const child of children.values()) child.kill('SIGKILL');
  process.exit(0);
}
process.on('disconnect', end);
// The channel's close is how a supervisor's death normally arrives; a spawner whose channel went
// without that event (found after CI runs: orphans under init, their sandboxes still running) also
// sees its parent change, once a second.
const supervisor = process.ppid;
setInterval(() => {
  if (process.ppid !== supervisor || !process.connected) end();
}, 1000);
