import { EventEmitter } from 'node:events';

/**
 * Typed events the core emits. Metrics, audit and logs subscribe to these instead of being
 * sprinkled through the supervisor and sandboxes.
 */
/** `violation`: the sandbox broke the protocol or a limit the supervisor enforces, and was killed. */
export type JobOutcome =
  'completed' | 'failed' | 'timeout' | 'cancelled' | 'oom' | 'crashed' | 'violation' | 'requeued';
export type LifecycleState = 'starting' | 'running' | 'draining' | 'stopped' | 'failed';

export interface FleetEvents {
  'supervisor:state': { supervisorId: string; state: LifecycleState; previous: LifecycleState | null };
  'job:started': { jobId: string; jobType: string; attempt: number; queuedMs: number };
  'job:finished': {
    jobId: string;
    jobType: string;
    outcome: JobOutcome;
    durationMs: number;
    errorCode?: string;
    willRetry: boolean;
    cpuMs?: number;
    peakHeapBytes?: number;
    /** Peak memory of the sandbox's cgroup (process sandboxes with cgroups). */
    peakMemoryBytes?: number;
  };
  'sandbox:spawned': { jobType: string; spawnMs: number };
  'sandbox:destroyed': { jobType: string; reason: string };
  /**
   * A sandbox sent what the protocol or its job's limits do not allow and was killed; its job (if
   * it ran one) failed with `code`. `problem` describes what was sent, never its content.
   */
  'sandbox:violation': {
    jobType: string;
    jobId: string | null;
    code: 'SANDBOX_PROTOCOL' | 'SANDBOX_LIMIT';
    problem: string;
  };
  /** A process sandbox tried to reach a destination outside its type's egress policy. */
  'egress:refused': { jobType: string; jobId: string | null; destination: string; reason: string };
  /** The egress proxy put an injected secret's value into a request toward its bound host. */
  'secret:injected': { jobType: string; secret: string };
  /** The egress proxy refused a request for a secret placeholder in it (wrong host, header, URL, job, or a replay). */
  'secret:inject-refused': { jobType: string; secret: string };
  /** A check of the audit trail's MAC chain (supervisors' tail check, the retention pass). */
  'audit:verified': {
    by: 'tail' | 'retention';
    ok: boolean;
    records: number;
    firstBreak: { at: string; writer: string; reason: string } | null;
  };
  'job:enqueued': { jobType: string; count: number; via: 'http' | 'client' };
  /** Redis refused a write because it is at maxmemory. */
  'redis:full': { operation: string };
  'secret:accessed': {
    secret: string;
    jobType: string;
    outcome: 'granted' | 'denied' | 'error';
    provider: string;
    latencyMs: number;
  };
  'rotation:finished': {
    secret: string;
    ok: boolean;
    step?: 'create' | 'set' | 'test' | 'promote' | 'retire';
    durationMs: number;
  };
  /** Secret values now held by sandboxes: +n when handed over, -n when the job ends and they are zeroed. */
  'secret:values': { delta: number };
  /** Credentials a backend minted for running jobs (Vault dynamic secrets): +1 minted, -n at job end. */
  'secret:dynamic': { delta: number };
  /** Job tokens of dead supervisors revoked by a ledger sweep (their dynamic credentials with them). */
  'secret:orphans-revoked': { count: number };
  /** The backend did not destroy a dynamic credential at its job's end (its revocation failed). */
  'secret:revoke-failed': { jobType: string; secret: string };
}

export type FleetEventName = keyof FleetEvents;

export class FleetEventBus {
  readonly #emitter = new EventEmitter({ captureRejections: false });

  constructor() {
    this.#emitter.setMaxListeners(100);
  }

  emit<E extends FleetEventName>(event: E, payload: FleetEvents[E]): void {
    this.#emitter.emit(event, payload);
  }

  on<E extends FleetEventName>(event: E, listener: (payload: FleetEvents[E]) => void): () => void {
    this.#emitter.on(event, listener);
    return () => this.#emitter.off(event, listener);
  }
}
