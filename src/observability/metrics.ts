import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { FleetEventBus, LifecycleState } from '../events.js';
import type { JobType } from '../config/resolve.js';

/**
 * The fleet's Prometheus metrics. One registry per process; the supervisor and the API attach to
 * it by subscribing to core events, so the core never calls metrics directly. Labels are bounded:
 * job type, outcome, state, provider, secret *name*, route pattern, never a job id or a value.
 */
export class FleetMetrics {
  readonly registry = new Registry();
  readonly #collectors: (() => Promise<void> | void)[] = [];

  readonly jobDuration = new Histogram({
    name: 'fleet_job_duration_seconds',
    help: 'Time from a job entering its sandbox to its end, by job type and outcome.',
    labelNames: ['job_type', 'outcome'] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    registers: [this.registry],
  });
  readonly jobs = new Counter({
    name: 'fleet_jobs_total',
    help: 'Jobs ended, by type and outcome (completed, failed, timeout, cancelled, oom, crashed, violation, requeued).',
    labelNames: ['job_type', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly timeouts = new Counter({
    name: 'fleet_job_timeouts_total',
    help: 'Jobs whose sandbox was terminated at timeoutMs.',
    labelNames: ['job_type'] as const,
    registers: [this.registry],
  });
  readonly retries = new Counter({
    name: 'fleet_job_retries_total',
    help: 'Failed attempts that will be retried.',
    labelNames: ['job_type'] as const,
    registers: [this.registry],
  });
  readonly queueWait = new Histogram({
    name: 'fleet_job_queue_wait_seconds',
    help: 'Time from enqueue to start.',
    labelNames: ['job_type'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
    registers: [this.registry],
  });
  readonly jobCpu = new Histogram({
    name: 'fleet_job_cpu_seconds',
    help: "CPU time of a job: user + system of its sandbox's cgroup where it has one, else the time the sandbox's event loop was busy (a per-thread proxy the sandbox reports).",
    labelNames: ['job_type'] as const,
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    registers: [this.registry],
  });
  readonly jobHeap = new Histogram({
    name: 'fleet_job_peak_heap_bytes',
    help: 'V8 heap reserved by the sandbox at job end.',
    labelNames: ['job_type'] as const,
    buckets: [4e6, 8e6, 16e6, 32e6, 64e6, 128e6, 256e6, 512e6, 1e9],
    registers: [this.registry],
  });
  readonly jobMemory = new Histogram({
    name: 'fleet_job_peak_memory_bytes',
    help: "Peak memory of a process sandbox's cgroup during a job (heap, Buffers, native, /tmp pages).",
    labelNames: ['job_type'] as const,
    buckets: [32e6, 64e6, 128e6, 256e6, 512e6, 1e9, 2e9, 4e9],
    registers: [this.registry],
  });
  readonly spawn = new Histogram({
    name: 'fleet_sandbox_spawn_seconds',
    help: 'Time to start a sandbox and load its processor.',
    labelNames: ['job_type'] as const,
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly sandboxes = new Gauge({
    name: 'fleet_sandboxes',
    help: 'Sandboxes by state (warm, busy, starting).',
    labelNames: ['job_type', 'state'] as const,
    registers: [this.registry],
  });
  readonly concurrencyLimit = new Gauge({
    name: 'fleet_concurrency_limit',
    help: 'Per-supervisor concurrency of each job type.',
    labelNames: ['job_type'] as const,
    registers: [this.registry],
  });
  readonly concurrencyInUse = new Gauge({
    name: 'fleet_concurrency_in_use',
    help: 'Jobs of each type running now.',
    labelNames: ['job_type'] as const,
    registers: [this.registry],
  });
  readonly queueJobs = new Gauge({
    name: 'fleet_queue_jobs',
    help: 'Jobs in Redis by type and state (waiting, active, delayed, prioritized, completed, failed).',
    labelNames: ['job_type', 'state'] as const,
    registers: [this.registry],
  });
  readonly supervisorState = new Gauge({
    name: 'fleet_supervisor_state',
    help: '1 for the state this supervisor is in.',
    labelNames: ['state'] as const,
    registers: [this.registry],
  });
  readonly enqueued = new Counter({
    name: 'fleet_jobs_enqueued_total',
    help: 'Jobs enqueued, by type and path (http, client).',
    labelNames: ['job_type', 'via'] as const,
    registers: [this.registry],
  });
  readonly httpRequests = new Counter({
    name: 'fleet_http_requests_total',
    help: 'API requests by method, route pattern and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [this.registry],
  });
  readonly httpDuration = new Histogram({
    name: 'fleet_http_request_duration_seconds',
    help: 'API request latency by method and route pattern.',
    labelNames: ['method', 'route'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });
  readonly secretAccesses = new Counter({
    name: 'fleet_secret_accesses_total',
    help: 'Secret access attempts by secret name, job type and outcome (granted, denied, error).',
    labelNames: ['secret', 'job_type', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly secretFetch = new Histogram({
    name: 'fleet_secret_fetch_seconds',
    help: 'Time to fetch one secret, by provider.',
    labelNames: ['provider'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2],
    registers: [this.registry],
  });
  readonly rotations = new Counter({
    name: 'fleet_secret_rotations_total',
    help: 'Rotations by secret and outcome (ok, failed).',
    labelNames: ['secret', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly rotationFailures = new Counter({
    name: 'fleet_secret_rotation_failures_total',
    help: 'Failed rotations by secret and the step that failed (create, set, test, promote, retire).',
    labelNames: ['secret', 'step'] as const,
    registers: [this.registry],
  });
  readonly lastRotation = new Gauge({
    name: 'fleet_secret_last_rotation_timestamp_seconds',
    help: 'When the secret was last rotated successfully (Unix time).',
    labelNames: ['secret'] as const,
    registers: [this.registry],
  });
  readonly secretAge = new Gauge({
    name: 'fleet_secret_age_seconds',
    help: 'Age of the current version.',
    labelNames: ['secret'] as const,
    registers: [this.registry],
  });
  readonly rotationOverdue = new Gauge({
    name: 'fleet_secret_rotation_overdue',
    help: '1 when the secret is past its rotation due time.',
    labelNames: ['secret'] as const,
    registers: [this.registry],
  });
  readonly exposureRisk = new Gauge({
    name: 'fleet_secret_exposure_risk',
    help: 'max(age / allowed age, overdue, last rotation failed, no policy, denied accesses in 24h): 0 healthy, >= 1 needs action.',
    labelNames: ['secret'] as const,
    registers: [this.registry],
  });
  readonly redisFull = new Counter({
    name: 'fleet_redis_full_total',
    help: 'Writes Redis refused at maxmemory (enqueues answered 507 REDIS_FULL).',
    labelNames: ['operation'] as const,
    registers: [this.registry],
  });
  readonly egressRefused = new Counter({
    name: 'fleet_egress_refused_total',
    help: 'Connections a process sandbox tried outside its egress policy (each one audited with its destination).',
    labelNames: ['job_type'] as const,
    registers: [this.registry],
  });
  readonly sandboxViolations = new Counter({
    name: 'fleet_sandbox_violations_total',
    help: 'Sandboxes killed for what they sent: SANDBOX_PROTOCOL (a message or frame the protocol does not allow) or SANDBOX_LIMIT (past a limit of its job); each one audited.',
    labelNames: ['job_type', 'code'] as const,
    registers: [this.registry],
  });
  readonly secretInjections = new Counter({
    name: 'fleet_secret_injections_total',
    help: 'Requests the egress proxy sent with an injected secret put in (toward its bound host).',
    labelNames: ['job_type', 'secret'] as const,
    registers: [this.registry],
  });
  readonly secretInjectionsRefused = new Counter({
    name: 'fleet_secret_injection_refused_total',
    help: 'Requests refused for a secret placeholder sent where its binding does not allow (other host or header, URL, body, another job, a replay): possible exfiltration, each one audited.',
    labelNames: ['job_type', 'secret'] as const,
    registers: [this.registry],
  });
  readonly auditChainOk = new Gauge({
    name: 'fleet_audit_chain_ok',
    help: '1 until a check of the audit MAC chain finds a break, then 0: it found a deleted, inserted, edited or reordered record (see `fleet audit verify`).',
    registers: [this.registry],
  });
  readonly auditChainBreaks = new Counter({
    name: 'fleet_audit_chain_breaks_total',
    help: 'Audit chain checks that found a broken link.',
    labelNames: ['by'] as const,
    registers: [this.registry],
  });
  readonly auditRecordsChecked = new Counter({
    name: 'fleet_audit_records_verified_total',
    help: 'Audit records whose MAC and link were checked.',
    registers: [this.registry],
  });
  readonly secretValuesAlive = new Gauge({
    name: 'fleet_secret_values_alive',
    help: 'Secret values held by sandboxes right now (0 when idle).',
    registers: [this.registry],
  });
  readonly dynamicLeasesAlive = new Gauge({
    name: 'fleet_dynamic_leases_alive',
    help: 'Credentials a backend minted for jobs still running (Vault dynamic secrets); each is revoked at its job end.',
    registers: [this.registry],
  });
  readonly dynamicRevokeFailures = new Counter({
    name: 'fleet_dynamic_revoke_failures_total',
    help: 'Dynamic credentials the backend did not destroy at job end (their revocation failed): each may outlive its job.',
    labelNames: ['job_type', 'secret'],
    registers: [this.registry],
  });
  readonly orphanedLeasesRevoked = new Counter({
    name: 'fleet_orphaned_leases_revoked_total',
    help: 'Job tokens (and their dynamic credentials) revoked for a supervisor that died mid-job.',
    registers: [this.registry],
  });

  constructor(options: { defaultMetrics?: boolean } = {}) {
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    this.secretValuesAlive.set(0);
    this.dynamicLeasesAlive.set(0);
    this.orphanedLeasesRevoked.inc(0);
    this.auditChainOk.set(1);
    // Present from the first scrape, so an alert on its increase has a series to compare with.
    for (const op of ['enqueue', 'batch enqueue']) this.redisFull.labels(op).inc(0);
  }

  /** Subscribes to a supervisor's or API's events. Returns the unsubscribe function. */
  /**
   * Zero series for the refusal counters of the job types that can have refusals, so a dashboard
   * shows 0 rather than "no data" and an alert on their increase has a series from the first
   * scrape (a counter made only at its first event misses that increase).
   */
  declareJobTypes(types: Iterable<JobType>): void {
    for (const t of types) {
      if (t.egress === 'none') continue;
      this.egressRefused.labels(t.name).inc(0);
      for (const [secret, mode] of t.secretModes)
        if (mode === 'inject') this.secretInjectionsRefused.labels(t.name, secret).inc(0);
    }
  }

  attach(events: FleetEventBus): () => void {
    const offs = [
      events.on('job:started', (e) => this.queueWait.labels(e.jobType).observe(Math.max(0, e.queuedMs) / 1000)),
      events.on('job:finished', (e) => {
        this.jobs.labels(e.jobType, e.outcome).inc();
        this.jobDuration.labels(e.jobType, e.outcome).observe(e.durationMs / 1000);
        if (e.outcome === 'timeout') this.timeouts.labels(e.jobType).inc();
        if (e.willRetry && e.outcome !== 'requeued') this.retries.labels(e.jobType).inc();
        if (e.cpuMs !== undefined) this.jobCpu.labels(e.jobType).observe(e.cpuMs / 1000);
        if (e.peakHeapBytes !== undefined) this.jobHeap.labels(e.jobType).observe(e.peakHeapBytes);
        if (e.peakMemoryBytes !== undefined) this.jobMemory.labels(e.jobType).observe(e.peakMemoryBytes);
      }),
      events.on('sandbox:spawned', (e) => this.spawn.labels(e.jobType).observe(e.spawnMs / 1000)),
      events.on('job:enqueued', (e) => this.enqueued.labels(e.jobType, e.via).inc(e.count)),
      events.on('secret:accessed', (e) => {
        this.secretAccesses.labels(e.secret, e.jobType, e.outcome).inc();
        if (e.outcome === 'granted') this.secretFetch.labels(e.provider).observe(e.latencyMs / 1000);
      }),
      events.on('secret:values', (e) => this.secretValuesAlive.inc(e.delta)),
      events.on('secret:dynamic', (e) => this.dynamicLeasesAlive.inc(e.delta)),
      events.on('secret:orphans-revoked', (e) => this.orphanedLeasesRevoked.inc(e.count)),
      events.on('secret:revoke-failed', (e) => this.dynamicRevokeFailures.labels(e.jobType, e.secret).inc()),
      events.on('egress:refused', (e) => this.egressRefused.labels(e.jobType).inc()),
      events.on('sandbox:violation', (e) => this.sandboxViolations.labels(e.jobType, e.code).inc()),
      events.on('secret:injected', (e) => this.secretInjections.labels(e.jobType, e.secret).inc()),
      events.on('secret:inject-refused', (e) => this.secretInjectionsRefused.labels(e.jobType, e.secret).inc()),
      events.on('audit:verified', (e) => {
        this.auditChainOk.set(e.ok ? 1 : 0);
        this.auditRecordsChecked.inc(e.records);
        if (!e.ok) this.auditChainBreaks.labels(e.by).inc();
      }),
      events.on('redis:full', (e) => this.redisFull.labels(e.operation).inc()),
      events.on('rotation:finished', (e) => {
        this.rotations.labels(e.secret, e.ok ? 'ok' : 'failed').inc();
        if (!e.ok) this.rotationFailures.labels(e.secret, e.step ?? 'create').inc();
      }),
      events.on('supervisor:state', (e) => {
        for (const s of ['starting', 'running', 'draining', 'stopped', 'failed'] satisfies LifecycleState[])
          this.supervisorState.labels(s).set(s === e.state ? 1 : 0);
      }),
    ];
    return () => offs.forEach((off) => off());
  }

  /** Registers work to do right before each scrape (gauges read from pools and Redis). */
  onCollect(fn: () => Promise<void> | void): void {
    this.#collectors.push(fn);
  }

  async render(): Promise<{ contentType: string; body: string }> {
    await Promise.all(this.#collectors.map(async (c) => c()));
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
