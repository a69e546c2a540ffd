/**
 * The egress proxy of one process sandbox, run by the supervisor outside the sandbox. Inside the
 * OS layer the sandbox has no network but this proxy's Unix socket. Its parts:
 * - {@link EgressTunnel}: the listener; every connection checked against the job type's egress
 *   policy after DNS resolution (`egress-policy.ts`), refusals reported and answered 403, the
 *   number of open connections capped;
 * - {@link EgressInjector}, for types that take a secret as `inject`: terminates the sandbox's TLS,
 *   swaps placeholders for values where their binding allows (`egress-injection-check.ts`) and masks
 *   the values in what comes back (`egress-masker.ts`).
 */
import { EgressInjector, type InjectOptions } from './egress-injector.js';
import { EgressTunnel, type EgressRefusal } from './egress-tunnel.js';
import type { Egress } from './sandbox-boundary.js';

export type { EgressRefusal } from './egress-tunnel.js';
export type { InjectionRefusal, InjectOptions } from './egress-injector.js';
export { matchesEgress, splitHostPort } from '../config/hosts.js';

export interface EgressProxyOptions {
  egress: Egress;
  inject?: InjectOptions;
  /** Addresses of the fleet's own services (Redis, Vault, KMS) that no sandbox may reach unless listed. */
  fleetAddresses?: readonly string[];
  onRefused: (refusal: EgressRefusal) => void;
  /** A handler failed on what the sandbox sent (its connection was closed); for logs. */
  onError?: (what: string, err: unknown) => void;
  /** Upstream connect timeout. @defaultValue 10000 */
  connectTimeoutMs?: number;
  /** Connections from the sandbox open at once; more are dropped (descriptors it can make the supervisor hold). @defaultValue 64 */
  maxConnections?: number;
  /** Request bytes held at once while looking for placeholders (injection). @defaultValue 2 × inject.maxBodyBytes */
  maxBufferedBytes?: number;
}

/** Connections a sandbox may hold open through its proxy at once, unless configured. */
export const DEFAULT_MAX_EGRESS_CONNECTIONS = 64;

export class EgressProxy {
  readonly #tunnel: EgressTunnel;
  readonly #injector: EgressInjector | null;
  /** Counted for tests and `fleet status`: connections allowed, refused and dropped, requests refused for a placeholder. */
  readonly stats = { allowed: 0, refused: 0, dropped: 0, injectionsRefused: 0 };

  constructor(options: EgressProxyOptions) {
    const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    const injector = options.inject
      ? new EgressInjector({
          ...options.inject,
          connectTimeoutMs,
          maxBufferedBytes: options.maxBufferedBytes ?? 2 * options.inject.maxBodyBytes,
          stats: this.stats,
          onError: options.onError,
        })
      : null;
    this.#injector = injector;
    this.#tunnel = new EgressTunnel({
      egress: options.egress,
      fleetAddresses: options.fleetAddresses,
      onRefused: options.onRefused,
      onError: options.onError,
      connectTimeoutMs,
      maxConnections: options.maxConnections ?? DEFAULT_MAX_EGRESS_CONNECTIONS,
      stats: this.stats,
      terminate: injector ? (socket, head, target) => injector.terminate(socket, head, target) : undefined,
      refusesPlain: injector ? (req, res, destination) => injector.refusesPlain(req, res, destination) : undefined,
    });
  }

  /** Listens on a Unix socket path (OS layer) or a loopback TCP port (`0` picks one). */
  listen(target: string | 0): Promise<string> {
    return this.#tunnel.listen(target);
  }

  /**
   * Job end (the sandbox host calls it, before the job's values are zeroed): the exchanges of
   * terminated (injecting) connections still in flight are cut and the upstream connections
   * closed, so no response for the ended job reaches the sandbox. Idle connections from the
   * sandbox stay open for its next job; raw tunnels (types without injected secrets) carry no
   * values and stay.
   */
  endJob(): void {
    this.#tunnel.endJob();
    this.#injector?.endJob();
  }

  async close(): Promise<void> {
    this.#injector?.close();
    await this.#tunnel.close();
  }
}
