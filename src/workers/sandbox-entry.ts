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
import { ProcessorLoadError, serializeError, errnoCode, errorMessage, fieldOf } from '../errors.js';
import { MAX_OUTGOING_FRAME_BYTES } from './channel.js';
import { openFdChannel } from './fd-channel.js';
import type { SandboxInit, ToSandbox } from './protocol.js';
import { rotatorOf, type Processor, type Rotator } from './processor-api.js';
import { catchStrayErrors, hardenProcess } from './sandbox-hardening.js';
import { asToSandbox, channelForManyJobs, init, onMessage, port, post, useChannel, useInit } from './sandbox-link.js';
import { abortJob, captureOutput, emitLog, onSecretReply, run } from './sandbox-run.js';

/**
 * Opens fd 3 as the channel and returns the init message (its first frame, which the supervisor
 * sends as the process starts). What follows is delivered through `onMessage`, once the processor
 * has loaded.
 */
function openChannel(): SandboxInit {
  // The supervisor is gone (or closed the channel): nothing is left to do here.
  const opened = openFdChannel(3, MAX_OUTGOING_FRAME_BYTES, () => process.exit(0));
  useChannel(opened.channel);
  const first = opened.first === null ? null : asToSandbox(opened.first);
  if (first?.type !== 'init') process.exit(0);
  return first.init;
}

/** What `require()` of an ES module it cannot load synchronously throws: import() loads those. */
const REQUIRE_ESM_REFUSALS = new Set(['ERR_REQUIRE_ASYNC_MODULE', 'ERR_REQUIRE_ESM', 'ERR_REQUIRE_CYCLE_MODULE']);

/**
 * The processor's module namespace. `require()` first: since Node 22.12 it loads an ES module
 * synchronously, which spares each sandbox start the ESM loader's dynamic `import()` path. A module
 * with top-level await (refused before it runs), a CommonJS module (whose `require()` gives its
 * exports, not a namespace; `import()` then takes it from the require cache without running it
 * again) and a Node without require(esm) go through `import()`, which gives what it always gave.
 */
async function importModule(file: string): Promise<unknown> {
  try {
    const mod: unknown = process.getBuiltinModule('node:module').createRequire(file)(file);
    if (Object.prototype.toString.call(mod) === '[object Module]') return mod;
  } catch (err) {
    if (!REQUIRE_ESM_REFUSALS.has(errnoCode(err) ?? '')) throw err;
  }
  return import(pathToFileURL(file).href);
}

/** The module's export: a processor function, or a rotator object. */
async function load(): Promise<Processor | Rotator> {
  let mod: unknown;
  if (port && /\.[cm]?ts$/.test(init.processorPath)) {
    // TypeScript in a thread: through tsx, whose hooks are the ESM loader's. A process sandbox strips
    // types natively (Node ≥ 22.18, or --experimental-strip-types): tsx's esbuild would need a
    // child process, which it may not start.
    const { register } = await import('tsx/esm/api');
    register();
    mod = await import(pathToFileURL(init.processorPath).href);
  } else mod = await importModule(init.processorPath);
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
    useInit(openChannel());
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
  // Ready first: a process starts its thread pool for the channel's reads after that, off the start's path.
  post({ type: 'ready' });
  let runs = 0;
  onMessage((msg: ToSandbox) => {
    if (msg.type === 'run' && ++runs === 2) channelForManyJobs();
    if (msg.type === 'run') void run(module, msg);
    else if (msg.type === 'secret') onSecretReply(msg);
    else if (msg.type === 'abort') abortJob(msg.reason);
  });
}

captureOutput();
void main();
