import type { JobType } from '../config/resolve.js';
import { SandboxProtocolError, toError } from '../errors.js';
import type { FleetEventBus } from '../events.js';
import type { Logger } from '../observability/logger.js';
import { Sandbox } from './sandbox.js';
import type { OsLayer, SandboxLayer } from './sandbox-boundary.js';
import type { InjectOptions } from './egress-proxy.js';
import type { ResourceLayer } from './resource-limits.js';

/** What process sandboxes of every type share: the OS layer probe, and what none may reach. */
export interface ProcessBoundary {
  osLayer: OsLayer;
  /** Paths no sandbox may read (the data dir). */
  forbiddenPaths: readonly string[];
  /** Addresses of Redis, Vault and KMS, refused by every egress proxy unless listed. */
  fleetAddresses: readonly string[];
  /** Secret injection at egress, for the types that take a secret as `inject`. */
  inject?: Omit<InjectOptions, 'currentJob'>;
  /** CPU priority of every sandbox, thread or process (supervisor.sandboxNice). */
  nice?: number;
  /** What the kernel can cap per process sandbox here (cgroup, rlimits, seccomp). */
  resources?: ResourceLayer;
}

export interface SandboxPoolStats {
  jobType: string;
  isolation: 'job' | 'pool';
  /** The layers this type's sandboxes run behind. */
  layers: readonly SandboxLayer[];
  warm: number;
  busy: number;
  starting: number;
}

/**
 * The sandboxes of one job type. With `isolation: "job"` every sandbox runs exactly one job and is
 * destroyed after it, while `warmSandboxes` spares are kept started so a job never waits for a
 * spawn. With `isolation: "pool"` sandboxes are reused for jobs of this type only, and recycled
 * after `maxJobsPerSandbox` jobs, when their heap passes `recycleHeapUsedMb`, or after any failure
 * that may have left them dirty.
 */
export class SandboxPool {
  readonly #type: JobType;
  readonly #log: Logger;
  readonly #events: FleetEventBus;
  readonly #idle: Sandbox[] = [];
  readonly #busy = new Set<Sandbox>();
  #starting = 0;
  #closed = false;
  /** Starts and destroys in flight: close() waits for them, so nothing this pool started outlives it. */
  readonly #settling = new Set<Promise<unknown>>();
  /** Set after a failed spawn so the refill loop does not spin on a broken processor. */
  #lastSpawnError: Error | null = null;

  readonly #boundary: ProcessBoundary;
  #layers: readonly SandboxLayer[];

  constructor(type: JobType, log: Logger, events: FleetEventBus, boundary: ProcessBoundary) {
    this.#type = type;
    this.#log = log.scope({ jobType: type.name });
    this.#events = events;
    this.#boundary = boundary;
    this.#layers = type.sandbox === 'thread' ? ['thread'] : [];
  }

  get layers(): readonly SandboxLayer[] {
    return this.#layers;
  }

  /**
   * Starts the warm sandboxes; rejects if the processor cannot be loaded. A processor that breaks
   * the protocol while loading is hostile code, not a configuration mistake: it does not stop the
   * supervisor (and every other type) from starting; its jobs fail with SANDBOX_PROTOCOL.
   */
  async start(): Promise<void> {
    const n = this.#type.warmSandboxes;
    const settled = await Promise.allSettled(Array.from({ length: n }, () => this.#spawn()));
    const started = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed && !(failed.reason instanceof SandboxProtocolError)) {
      await Promise.all(started.map((sb) => sb.destroy()));
      throw failed.reason;
    }
    if (failed)
      this.#log.error('sandboxes of this type break the protocol while loading; its jobs will fail', {
        error: toError(failed.reason).message,
      });
    this.#idle.push(...started);
  }

  #spawn(): Promise<Sandbox> {
    return this.#track(this.#startOne());
  }

  #destroy(sb: Sandbox): void {
    void this.#track(sb.destroy());
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#settling.add(p);
    const forget = (): void => void this.#settling.delete(p);
    p.then(forget, forget);
    return p;
  }

  async #startOne(): Promise<Sandbox> {
    this.#starting += 1;
    try {
      const t = this.#type;
      const b = this.#boundary;
      const sb = await Sandbox.start({
        processorPath: t.processorPath,
        jobType: t.name,
        maxResultBytes: t.maxResultBytes,
        maxOldGenerationSizeMb: t.maxOldGenerationSizeMb,
        limits: t.limits,
        onViolation: (v) => this.#events.emit('sandbox:violation', v),
        ...(b.nice ? { nice: b.nice } : {}),
        ...(t.sandbox === 'process'
          ? {
              process: {
                osLayer: b.osLayer,
                egress: t.egress,
                tmpSizeMb: t.tmpSizeMb,
                readPaths: t.readPaths,
                forbiddenPaths: b.forbiddenPaths,
                fleetAddresses: b.fleetAddresses,
                maxEgressConnections: t.limits.maxEgressConnections,
                maxEgressRefusals: t.limits.maxEgressRefusals,
                ...(b.resources
                  ? {
                      resources: {
                        layer: b.resources,
                        limits: {
                          memoryLimitMb: t.memoryLimitMb,
                          maxProcesses: t.maxProcesses,
                          cpuWeight: t.cpuWeight,
                          maxOpenFiles: t.maxOpenFiles,
                          maxFileSizeMb: t.maxFileSizeMb,
                          ...(t.cpuQuotaPercent ? { cpuQuotaPercent: t.cpuQuotaPercent } : {}),
                        },
                      },
                    }
                  : {}),
                ...(t.limits.maxEgressBufferedBytes ? { maxEgressBufferedBytes: t.limits.maxEgressBufferedBytes } : {}),
                ...(b.inject && [...t.secretModes.values()].includes('inject') ? { inject: b.inject } : {}),
                onEgressRefused: (r) =>
                  this.#events.emit('egress:refused', {
                    jobType: t.name,
                    jobId: r.jobId,
                    destination: r.destination,
                    reason: r.reason,
                  }),
              },
            }
          : {}),
      });
      this.#layers = sb.layers;
      this.#lastSpawnError = null;
      this.#events.emit('sandbox:spawned', { jobType: this.#type.name, spawnMs: sb.spawnMs });
      return sb;
    } catch (err) {
      this.#lastSpawnError = toError(err);
      if (err instanceof SandboxProtocolError)
        this.#events.emit('sandbox:violation', {
          jobType: this.#type.name,
          jobId: null,
          code: 'SANDBOX_PROTOCOL',
          problem: err.message,
        });
      throw err;
    } finally {
      this.#starting -= 1;
    }
  }

  /** Keeps `warmSandboxes` spares started, in the background. */
  #refill(): void {
    if (this.#closed || this.#lastSpawnError) return;
    const missing = this.#type.warmSandboxes - this.#idle.length - this.#starting;
    for (let i = 0; i < missing; i++) {
      this.#spawn().then(
        (sb) => {
          if (this.#closed) this.#destroy(sb);
          else this.#idle.push(sb);
        },
        (err: unknown) => this.#log.error('could not start a spare sandbox', { error: toError(err).message }),
      );
    }
  }

  /** A ready sandbox for one job: a warm spare if there is one, otherwise a fresh spawn. */
  async acquire(): Promise<Sandbox> {
    let sb = this.#idle.pop();
    while (sb && !sb.alive) sb = this.#idle.pop();
    if (!sb) sb = await this.#spawn();
    this.#busy.add(sb);
    if (this.#type.isolation === 'job') this.#refill();
    return sb;
  }

  /** Returns a sandbox after its job. `clean: false` (its state is in doubt) always destroys it. */
  release(sb: Sandbox, clean: boolean): void {
    this.#busy.delete(sb);
    const t = this.#type;
    let reason: string | null = null;
    if (t.isolation === 'job') reason = 'job-ended';
    else if (!clean || !sb.alive) reason = 'job-failed';
    else if (sb.jobsRun >= t.maxJobsPerSandbox) reason = 'max-jobs';
    else if (sb.lastHeapUsedBytes > t.recycleHeapUsedMb * 1024 * 1024) reason = 'heap-threshold';
    else if (this.#closed) reason = 'closing';

    if (reason === null) {
      this.#idle.push(sb);
      return;
    }
    this.#destroy(sb);
    this.#events.emit('sandbox:destroyed', { jobType: t.name, reason });
    this.#refill();
  }

  stats(): SandboxPoolStats {
    return {
      jobType: this.#type.name,
      isolation: this.#type.isolation,
      layers: this.#layers,
      warm: this.#idle.length,
      busy: this.#busy.size,
      starting: this.#starting,
    };
  }

  /**
   * Destroys every sandbox, idle and busy, and waits for the ones still starting or already on
   * their way out (a spare that finishes starting now is destroyed too).
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (;;) {
      const all = [...this.#idle.splice(0), ...this.#busy];
      this.#busy.clear();
      for (const sb of all) this.#destroy(sb);
      if (this.#settling.size === 0) return;
      await Promise.allSettled([...this.#settling]);
    }
  }
}
