/**
 * What the sandbox sets up against its own processor before any processor code runs: in a process
 * sandbox, its seat belts (no `process.kill`), the relay of its HTTP traffic to the supervisor's
 * egress proxy and the proxy settings armed on first use; in both kinds, the handlers that end a
 * sandbox whose state a stray error left unknown.
 */
import type { SandboxInit } from './protocol.js';
import { endSandbox, isEnding } from './sandbox-link.js';
import { failJobOnStrayError } from './sandbox-run.js';

/**
 * What a process sandbox sets up right after its init arrives: the seat belts, the egress
 * forwarder when its network namespace has only loopback, and the proxy settings on first use.
 */
export async function hardenProcess(init: SandboxInit): Promise<void> {
  harden();
  if (init.egressForwarder) await startEgressForwarder(init.egressForwarder);
  if (init.lazyProxy) armProxyOnFirstUse();
}

/** Ends the sandbox on a stray error (see {@link onStrayError}); set first thing in main(). */
export function catchStrayErrors(): void {
  process.on('uncaughtException', (err) => onStrayError('uncaught exception', err));
  process.on('unhandledRejection', (err) => onStrayError('unhandled rejection', err));
}

/**
 * OS layer: the sandbox's network namespace has only loopback. HTTP clients use the proxy
 * settings (`HTTPS_PROXY`, `NODE_USE_ENV_PROXY`) pointing here; this relays each connection to the
 * supervisor's egress proxy socket, which decides. Tampering with it gains nothing: the decision is
 * outside.
 */
function startEgressForwarder(f: { port: number; socket: string }): Promise<void> {
  const net = process.getBuiltinModule('node:net');
  return new Promise((resolve, reject) => {
    const server = net.createServer((client) => {
      const up = net.connect(f.socket);
      client.pipe(up).pipe(client);
      const end = (): void => {
        client.destroy();
        up.destroy();
      };
      client.on('error', end);
      up.on('error', end);
    });
    server.on('error', reject);
    server.listen(f.port, '127.0.0.1', () => {
      server.unref();
      resolve();
    });
  });
}

/**
 * Seat belts for a process sandbox, set before any processor code runs. The OS layer makes them
 * moot (nothing outside is visible); without it they keep a processor from signalling the
 * supervisor by pid. Node's permission model already denies child processes, workers, addons,
 * WASI, the inspector and `process.binding`.
 */
function harden(): void {
  const denied = (): never => {
    throw Object.assign(new Error('process.kill is not available in a fleet sandbox'), { code: 'ERR_ACCESS_DENIED' });
  };
  Object.defineProperty(process, 'kill', { value: denied, writable: false, configurable: false });
  Reflect.deleteProperty(process, '_kill');
  Reflect.deleteProperty(process, '_debugProcess');
}

/**
 * Applies the proxy settings when the processor first reaches for an HTTP client rather than at
 * start-up: the first `fetch()`, or the first import of `http`/`https` (a module hook), arms
 * `http.setGlobalProxyFromEnv()` once. A sandbox that never connects never loads it.
 */
function armProxyOnFirstUse(): void {
  const { registerHooks } = process.getBuiltinModule('node:module');
  let armed = false;
  const arm = (): void => {
    if (armed) return;
    armed = true;
    const http: typeof import('node:http') & { setGlobalProxyFromEnv?: () => void } =
      process.getBuiltinModule('node:http');
    http.setGlobalProxyFromEnv?.();
  };
  const originalFetch = globalThis.fetch;
  globalThis.fetch = (...args: Parameters<typeof fetch>) => {
    arm();
    globalThis.fetch = originalFetch;
    return originalFetch(...args);
  };
  const clients = new Set(['http', 'https', 'node:http', 'node:https']);
  registerHooks({
    resolve(specifier, context, nextResolve) {
      if (clients.has(specifier)) arm();
      return nextResolve(specifier, context);
    },
  });
}

/**
 * A throw or a rejection nothing awaits (a timer callback, a forgotten promise), as BullMQ's child
 * processes treat it: the job it happened in fails with the error (masked, code PROCESSOR_FAILED,
 * retried as the type allows), and the sandbox ends, since its state is no longer known. Without
 * this, the sandbox would die with Node's default report on stderr and the job count as a crash.
 */
function onStrayError(kind: 'uncaught exception' | 'unhandled rejection', err: unknown): void {
  if (isEnding()) return;
  failJobOnStrayError(kind, err);
  endSandbox(70);
}
