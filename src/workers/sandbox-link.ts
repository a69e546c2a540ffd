/**
 * The sandbox's end of its link to the supervisor, shared by the entry, the job run and the
 * hardening: which kind of sandbox this is, the init it was given, and `post`, the one way out.
 */
import { CHANNEL_ENV, CHANNEL_FD3 } from './channel.js';
import type { FdChannel } from './fd-channel.js';
import type { FromSandbox, SandboxInit, ToSandbox } from './protocol.js';

/**
 * Node's built-in modules that are not part of its start-up snapshot cost milliseconds of CPU each
 * to load (`node:net`, `node:v8`, `node:util`, `node:worker_threads` together ~10 ms, a third of a
 * bare Node start), and a `job` sandbox pays that per job: each is loaded where it is used, and
 * only by the kind of sandbox that uses it.
 */
const inProcess = process.env[CHANNEL_ENV] === CHANNEL_FD3;
// Read once and gone: the processor's environment is what the sandbox was given, no more.
Reflect.deleteProperty(process.env, CHANNEL_ENV);

/**
 * The channel to the supervisor: the thread's port, or a process's socket pair on fd 3 with
 * length-prefixed frames (channel.ts, through fd-channel.ts), opened by the entry's main() for a
 * process.
 */
const threads = inProcess ? null : process.getBuiltinModule('node:worker_threads');
/** A thread sandbox's port; null in a process sandbox. */
export const port = threads?.parentPort ?? null;
let channel: FdChannel | null = null;
/** Set once the sandbox is ending after a stray error: nothing more leaves it. */
let ending = false;

/*
 * What arrives here (workerData, thread messages and frames) comes only from the supervisor, which
 * builds it with the protocol's types: these casts name that contract, they do not check it.
 */
/* eslint-disable @typescript-eslint/consistent-type-assertions -- see the comment above */
export const asToSandbox = (m: unknown): ToSandbox => m as ToSandbox;
/** What the sandbox runs and its limits: a thread's workerData, a process's first frame (see {@link useInit}). */
export let init: SandboxInit = (port ? threads?.workerData : null) as SandboxInit;
/* eslint-enable @typescript-eslint/consistent-type-assertions -- end of the supervisor's contract */

/** A process sandbox's init, once its channel's first frame brought it. */
export function useInit(first: SandboxInit): void {
  init = first;
}

/** A process sandbox's channel (fd 3), once opened. */
export function useChannel(opened: FdChannel): void {
  channel = opened;
}

/** Messages from the supervisor: a thread's port, or a process's channel once the processor has loaded. */
export function onMessage(fn: (msg: ToSandbox) => void): void {
  if (port) port.on('message', (m: unknown) => fn(asToSandbox(m)));
  else channel?.listen((m) => fn(asToSandbox(m)));
}

export const post = (msg: FromSandbox, transfer: ArrayBuffer[] = []): void => {
  if (ending) return;
  if (port) {
    port.postMessage(msg, transfer);
    return;
  }
  channel?.send(msg);
};

/** Whether the sandbox is ending (after a stray error). */
export const isEnding = (): boolean => ending;

/** Ends the sandbox with `code`: nothing posted from now on leaves it; what was posted does first. */
export function endSandbox(code: number): void {
  ending = true;
  if (channel) channel.end(() => process.exit(code));
  else process.exit(code);
}

/** A second job: this sandbox is a pool's, and its channel is cheaper per message as a socket. */
export function channelForManyJobs(): void {
  channel?.toSocket();
}
