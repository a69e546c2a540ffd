/**
 * The Grafana dashboards, as typed code (grafana-foundation-sdk). `npm run dashboards` writes
 * them to grafana/dashboards/*.json; a test regenerates them and fails if the JSON differs.
 * Every query here is also evaluated against a real Prometheus by test/prometheus-e2e.test.ts.
 */
import { DashboardBuilder, RowBuilder, type Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatBuilder } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeseriesBuilder } from '@grafana/grafana-foundation-sdk/timeseries';

export const DATASOURCE = { type: 'prometheus', uid: 'prometheus' };

function q(expr: string, legend: string): DataqueryBuilder {
  return new DataqueryBuilder().expr(expr).legendFormat(legend).datasource(DATASOURCE);
}

function series(title: string, unit: string, description: string, ...queries: DataqueryBuilder[]): TimeseriesBuilder {
  const p = new TimeseriesBuilder().title(title).unit(unit).description(description).datasource(DATASOURCE).height(8).span(12);
  queries.forEach((query, i) => p.withTarget(query.refId(String.fromCharCode(65 + i))));
  return p;
}

function stat(title: string, unit: string, description: string, query: DataqueryBuilder): StatBuilder {
  return new StatBuilder().title(title).unit(unit).description(description).datasource(DATASOURCE).height(4).span(6).withTarget(query.refId('A'));
}

const quantiles = (metric: string, by: string, legend: string): DataqueryBuilder[] =>
  [0.5, 0.95, 0.99].map((p) => q(`histogram_quantile(${p}, sum by (le, ${by}) (rate(${metric}_bucket[$__rate_interval])))`, `p${Math.round(p * 100)} ${legend}`));

export function fleetDashboard(): Dashboard {
  return new DashboardBuilder('Fleet')
    .uid('fleet-overview')
    .description('Throughput, errors, latency, timeouts, concurrency, queues and sandbox resources.')
    .tags(['fleet'])
    .refresh('30s')
    .time({ from: 'now-1h', to: 'now' })
    .withRow(new RowBuilder('Jobs'))
    .withPanel(stat('Jobs completed / s', 'ops', 'All job types.', q('sum(rate(fleet_jobs_total{outcome="completed"}[$__rate_interval]))', 'completed')))
    .withPanel(stat('Error ratio', 'percentunit', 'Jobs that did not complete (failed, timeout, cancelled, oom, crashed) over all ended jobs.', q('sum(rate(fleet_jobs_total{outcome!~"completed|requeued"}[$__rate_interval])) / sum(rate(fleet_jobs_total[$__rate_interval]))', 'errors')))
    .withPanel(stat('Timeouts (window)', 'short', 'Sandboxes terminated at timeoutMs.', q('sum(increase(fleet_job_timeouts_total[$__rate_interval]))', 'timeouts')))
    .withPanel(stat('Supervisors running', 'short', 'Supervisors reporting state "running".', q('sum(fleet_supervisor_state{state="running"})', 'running')))
    .withPanel(series('Throughput by job type', 'ops', 'Completed jobs per second.', q('sum by (job_type) (rate(fleet_jobs_total{outcome="completed"}[$__rate_interval]))', '{{job_type}}')))
    .withPanel(series('Outcomes', 'ops', 'Ended jobs per second by outcome.', q('sum by (outcome) (rate(fleet_jobs_total[$__rate_interval]))', '{{outcome}}')))
    .withPanel(series('Error ratio by job type', 'percentunit', 'Share of ended jobs that did not complete.', q('sum by (job_type) (rate(fleet_jobs_total{outcome!~"completed|requeued"}[$__rate_interval])) / sum by (job_type) (rate(fleet_jobs_total[$__rate_interval]))', '{{job_type}}')))
    .withPanel(series('Job duration', 's', 'p50 / p95 / p99 time in the sandbox, per job type.', ...quantiles('fleet_job_duration_seconds', 'job_type', '{{job_type}}')))
    .withPanel(series('Timeouts and retries', 'short', 'Per job type.', q('sum by (job_type) (increase(fleet_job_timeouts_total[$__rate_interval]))', 'timeouts {{job_type}}'), q('sum by (job_type) (increase(fleet_job_retries_total[$__rate_interval]))', 'retries {{job_type}}')))
    .withPanel(series('Queue wait (enqueue → start)', 's', 'p50 / p95 / p99.', ...quantiles('fleet_job_queue_wait_seconds', 'job_type', '{{job_type}}')))
    .withRow(new RowBuilder('Capacity'))
    .withPanel(series('Concurrency in use vs limit', 'short', 'Summed over supervisors.', q('sum by (job_type) (fleet_concurrency_in_use)', 'in use {{job_type}}'), q('sum by (job_type) (fleet_concurrency_limit)', 'limit {{job_type}}')))
    .withPanel(series('Queue depth', 'short', 'Jobs in Redis by state (every supervisor reports the same queues: max, not sum).', q('max by (job_type, state) (fleet_queue_jobs{state=~"waiting|active|delayed|failed"})', '{{job_type}} {{state}}')))
    .withPanel(series('Sandboxes', 'short', 'Warm (idle, started), busy and starting, summed over supervisors.', q('sum by (job_type, state) (fleet_sandboxes)', '{{job_type}} {{state}}')))
    .withPanel(series('Sandbox spawn latency', 's', 'Thread start plus processor load.', ...quantiles('fleet_sandbox_spawn_seconds', 'job_type', '{{job_type}}')))
    .withRow(new RowBuilder('Resources'))
    .withPanel(series('Sandbox CPU per job (p95)', 's', "Time the sandbox's event loop was busy during a job.", q('histogram_quantile(0.95, sum by (le, job_type) (rate(fleet_job_cpu_seconds_bucket[$__rate_interval])))', '{{job_type}}')))
    .withPanel(series('Sandbox heap per job (p95)', 'bytes', 'V8 heap reserved by the sandbox at job end.', q('histogram_quantile(0.95, sum by (le, job_type) (rate(fleet_job_peak_heap_bytes_bucket[$__rate_interval])))', '{{job_type}}')))
    .withPanel(series('Process memory', 'bytes', 'Resident set of each fleet process (supervisor RSS includes its sandboxes).', q('process_resident_memory_bytes{job=~"fleet.*"}', '{{instance}}')))
    .withPanel(series('Process CPU', 'percentunit', 'CPU seconds per second of each fleet process.', q('rate(process_cpu_seconds_total{job=~"fleet.*"}[$__rate_interval])', '{{instance}}')))
    .withRow(new RowBuilder('API'))
    .withPanel(series('Enqueue rate', 'ops', 'Jobs enqueued per second, by type and path (http, client).', q('sum by (job_type, via) (rate(fleet_jobs_enqueued_total[$__rate_interval]))', '{{job_type}} {{via}}')))
    .withPanel(series('API requests by status', 'reqps', '', q('sum by (status) (rate(fleet_http_requests_total[$__rate_interval]))', '{{status}}')))
    .withPanel(series('API latency', 's', 'p50 / p95 / p99 per route.', ...quantiles('fleet_http_request_duration_seconds', 'route', '{{route}}')))
    .build();
}

export function secretsDashboard(): Dashboard {
  return new DashboardBuilder('Fleet secrets')
    .uid('fleet-secrets')
    .description('Secret accesses, denials, fetch latency and values held in memory.')
    .tags(['fleet', 'secrets'])
    .refresh('30s')
    .time({ from: 'now-6h', to: 'now' })
    .withRow(new RowBuilder('Access'))
    .withPanel(stat('Secret values in memory', 'short', 'Values held by sandboxes right now; 0 when idle. A value stuck above 0 means a job is holding secrets.', q('sum(fleet_secret_values_alive)', 'alive')))
    .withPanel(stat('Denied accesses (window)', 'short', 'Jobs asking for secrets their type does not declare.', q('sum(increase(fleet_secret_accesses_total{outcome="denied"}[$__rate_interval]))', 'denied')))
    .withPanel(stat('Fetch errors (window)', 'short', 'Provider down, secret missing, permission, integrity.', q('sum(increase(fleet_secret_accesses_total{outcome="error"}[$__rate_interval]))', 'errors')))
    .withPanel(stat('Accesses / s', 'ops', 'Granted.', q('sum(rate(fleet_secret_accesses_total{outcome="granted"}[$__rate_interval]))', 'granted')))
    .withPanel(series('Accesses by outcome', 'ops', '', q('sum by (outcome) (rate(fleet_secret_accesses_total[$__rate_interval]))', '{{outcome}}')))
    .withPanel(series('Accesses by secret', 'ops', 'Granted accesses per secret.', q('sum by (secret) (rate(fleet_secret_accesses_total{outcome="granted"}[$__rate_interval]))', '{{secret}}')))
    .withPanel(series('Denials by secret and job type', 'short', 'Who asked for what it may not read.', q('sum by (secret, job_type) (increase(fleet_secret_accesses_total{outcome="denied"}[$__rate_interval]))', '{{job_type}} → {{secret}}')))
    .withPanel(series('Fetch errors by secret', 'short', '', q('sum by (secret) (increase(fleet_secret_accesses_total{outcome="error"}[$__rate_interval]))', '{{secret}}')))
    .withPanel(series('Fetch latency by provider', 's', 'p50 / p95 / p99 (Vault: mint + read; KMS: Decrypt).', ...quantiles('fleet_secret_fetch_seconds', 'provider', '{{provider}}')))
    .withPanel(series('Secret values in memory', 'short', '', q('sum(fleet_secret_values_alive)', 'alive')))
    .withRow(new RowBuilder('Integrity and egress'))
    .withPanel(stat('Audit MAC chain', 'short', '1 while every check of the audit chain passed; 0 after one found a deleted, inserted, edited or reordered record (fleet audit verify).', q('min(fleet_audit_chain_ok)', 'chain ok')))
    .withPanel(stat('Audit records verified / s', 'ops', 'Records whose MAC and link the supervisors\' tail checks and retention verified.', q('sum(rate(fleet_audit_records_verified_total[$__rate_interval]))', 'verified')))
    .withPanel(series('Injected-secret refusals', 'short', 'Requests refused for a placeholder sent where its binding does not allow: possible exfiltration (fleet audit, action inject-refused).', q('sum by (job_type, secret) (increase(fleet_secret_injection_refused_total[$__rate_interval]))', '{{job_type}} → {{secret}}')))
    .withPanel(series('Egress refusals', 'short', 'Connections a sandbox tried outside its egress policy (fleet audit, action egress-refused).', q('sum by (job_type) (increase(fleet_egress_refused_total[$__rate_interval]))', '{{job_type}}')))
    .withPanel(series('Sandboxes killed for what they sent', 'short', 'SANDBOX_PROTOCOL: a message the protocol does not allow; SANDBOX_LIMIT: past a limit of its job (fleet audit, action sandbox-violation).', q('sum by (job_type, code) (increase(fleet_sandbox_violations_total[$__rate_interval]))', '{{job_type}} {{code}}')))
    .withRow(new RowBuilder('Rotation'))
    .withPanel(series('Exposure risk', 'short', 'max(age / allowed age, overdue, last rotation failed, no policy, denied accesses in 24 h): 0 healthy, ≥ 1 needs action.', q('max by (secret) (fleet_secret_exposure_risk)', '{{secret}}')))
    .withPanel(series('Age of current version', 's', 'API keys must rotate at least weekly, encryption keys daily.', q('max by (secret) (fleet_secret_age_seconds)', '{{secret}}')))
    .withPanel(series('Time since last successful rotation', 's', '', q('time() - max by (secret) (fleet_secret_last_rotation_timestamp_seconds)', '{{secret}}')))
    .withPanel(series('Rotations', 'short', 'By outcome.', q('sum by (secret, outcome) (increase(fleet_secret_rotations_total[$__rate_interval]))', '{{secret}} {{outcome}}')))
    .withPanel(series('Rotation failures by step', 'short', 'create, set, test, promote or retire; the current version stays in place.', q('sum by (secret, step) (increase(fleet_secret_rotation_failures_total[$__rate_interval]))', '{{secret}} {{step}}')))
    .withPanel(series('Rotation overdue', 'short', '1 while a secret is past its due time.', q('max by (secret) (fleet_secret_rotation_overdue)', '{{secret}}')))
    .build();
}

export function allDashboards(): Record<string, Dashboard> {
  return { 'fleet.json': fleetDashboard(), 'secrets.json': secretsDashboard() };
}
