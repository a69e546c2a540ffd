/**
 * Runs inside a sandbox (a worker thread, or its own process): loads one processor module (or a
 * rotator module), then runs the jobs it is sent, one at a time. Everything leaving the sandbox
 * goes through `post` (sandbox-link.ts), after secret masking, so nothing reaches the supervisor
 * that is not a plain, checked, masked message. One entry for both kinds of sandbox and both kinds
 * of module, so every output channel is masked the same way everywhere. The job run is
 * sandbox-run.ts, a process sandbox's hardening sandbox-hardening.ts; scripts/bundle-sandbox-entry.mjs
 * makes the three (and what they import) one file.
 */
import { pathToFileURL } from 'node:url';
import { ProcessorLoadError, serializeError, errorMessage, fieldOf } from '../errors.js';
import { FrameDecoder, MAX_OUTGOING_FRAME_BYTES } from './channel.js';
import type { SandboxInit, ToSandbox } from './protocol.js';
import { rotatorOf, type Processor, type Rotator } from './processor-api.js';
import { catchStrayErrors, hardenProcess } from './sandbox-hardening.js';
import { asToSandbox, init, port, post, useChannel, useInit } from './sandbox-link.js';
import { abortJob, captureOutput, emitLog, onSecretReply, run } from './sandbox-run.js';

let onSupervisorMessage: (msg: ToSandbox) => void = () => undefined;
const onMessage = (fn: (msg: ToSandbox) => void): void => {
  if (port) port.on('message', (m: unknown) => fn(asToSandbox(m)));
  else onSupervisorMessage = fn;
};

/** Opens fd 3 as the channel; resolves with the init message (the first frame). */
function openChannel(): Promise<SandboxInit> {
  return new Promise((resolve) => {
    const socket = new (process.getBuiltinModule('node:net').Socket)({ fd: 3, readable: true, writable: true });
    useChannel(socket);
    const decoder = new FrameDecoder(MAX_OUTGOING_FRAME_BYTES);
    let initialized = false;
    socket.on('data', (chunk: Buffer) => {
      for (const raw of decoder.push(chunk)) {
        const m = asToSandbox(raw);
        if (!initialized) {
          if (m.type === 'init') {
            initialized = true;
            resolve(m.init);
          }
        } else onSupervisorMessage(m);
      }
    });
    // The supervisor is gone (or closed the channel): nothing is left to do here.
    socket.on('end', () => process.exit(0));
    socket.on('error', () => process.exit(0));
  });
}

/** The module's export: a processor function, or a rotator object. */
async function load(): Promise<Processor | Rotator> {
  if (port && /\.[cm]?ts$/.test(init.processorPath)) {
    // TypeScript in a thread: through tsx. A process sandbox strips types natively (Node ≥ 22.18,
    // or --experimental-strip-types): tsx's esbuild would need a child process, which it may not start.
    const { register } = await import('tsx/esm/api');
    register();
  }
  const mod: unknown = await import(pathToFileURL(init.processorPath).href);
  if (init.kind === 'rotator') {
    const r = rotatorOf(mod);
    if (!r)
      throw new ProcessorLoadError(
        `rotator module ${init.processorPath} exports no create(ctx) function. Fix: export { create, set?, test?, finish? } or a default object with them.`,
      );
    return r;
  }
  const processor = fieldOf(mod, 'default');
  if (typeof processor !== 'function') {
    throw new ProcessorLoadError(
      `processor ${init.processorPath} has no default export function. Fix: export default async function (job, ctx) { … }`,
    );
  }
  // A function is all that can be checked of a processor before it runs; its result is checked after.
  // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- see the line above
  return processor as Processor;
}

async function main(): Promise<void> {
  catchStrayErrors();
  if (!port) {
    // A process sandbox: its init is the channel's first frame.
    useInit(await openChannel());
    await hardenProcess(init);
  }
  // Below the supervisor's priority (this thread only: pid 0 is the calling thread on Linux). Without
  // CAP_SYS_NICE the sandbox cannot raise it back.
  if (init.nice) {
    try {
      process.getBuiltinModule('node:os').setPriority(0, init.nice);
    } catch (err) {
      emitLog(
        'warn',
        `could not lower the sandbox's CPU priority to nice ${init.nice}: ${errorMessage(err)}`,
        undefined,
        'console',
      );
    }
  }
  let module: Processor | Rotator;
  try {
    module = await load();
  } catch (err) {
    post({
      type: 'load-failed',
      error: serializeError(
        err instanceof ProcessorLoadError
          ? err
          : new ProcessorLoadError(`could not load processor ${init.processorPath}: ${errorMessage(err)}`),
      ),
    });
    return;
  }
  onMessage((msg: ToSandbox) => {
    if (msg.type === 'run') void run(module, msg);
    else if (msg.type === 'secret') onSecretReply(msg);
    else if (msg.type === 'abort') abortJob(msg.reason);
  });
  post({ type: 'ready' });
}

captureOutput();
void main();
