/**
 * What stands around a supervisor's process sandboxes, prepared once at start: the OS layer
 * (namespaces, probed), the kernel's resource limits (cgroup, rlimits, seccomp, probed), the
 * layers each job type runs behind (logged), the fleet's own addresses no sandbox may reach, and
 * the egress injection of secrets (the egress CA and the placeholder registry, audited).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { FleetConfig, JobType } from '../config/resolve.js';
import { ConfigError, toError } from '../errors.js';
import type { FleetEventBus } from '../events.js';
import type { Logger } from '../observability/logger.js';
import type { AuditLog } from '../secrets/audit.js';
import { InjectionRegistry } from '../secrets/injection.js';
import { fleetServiceAddresses } from './fleet-addresses.js';
import { probeResourceLimits, weighSandboxes, type ResourceLayer } from './resource-limits.js';
import { probeOsLayer } from './sandbox-boundary.js';
import type { ProcessBoundary } from './sandbox-pool.js';

export interface BoundaryDeps {
  config: FleetConfig;
  /** The job types this supervisor runs. */
  types: readonly JobType[];
  /** The supervisor's Redis URL (its address is one no sandbox may reach). */
  redisUrl: string;
  log: Logger;
  events: FleetEventBus;
  workerId: string;
  /** Writes an audit record that is not a secret read (an injection, a refused placeholder). */
  audit: (record: Omit<Parameters<AuditLog['record']>[0], 'ts'>) => void;
}

/**
 * Probes the OS layer once and says, per type, which layers its sandboxes run behind; with
 * `supervisor.osLayer: "required"` (or `resourceLimits: "required"`) a missing layer stops start-up.
 * Returns the boundary the sandbox pools use, and the placeholder registry when a type injects.
 */
export async function prepareProcessBoundary(
  d: BoundaryDeps,
): Promise<{ boundary: ProcessBoundary; injections: InjectionRegistry | null }> {
  const sv = d.config.supervisor;
  const osLayer = await probeOsLayer(sv.osLayer, sv.bwrapPath);
  const processTypes = d.types.filter((t) => t.sandbox === 'process');
  if (!osLayer.available && processTypes.length) {
    if (sv.osLayer === 'required')
      throw new ConfigError(`supervisor.osLayer is "required" but the OS layer is unavailable: ${osLayer.reason}`);
    d.log.warn(`process sandboxes run WITHOUT the OS layer (namespaces): ${osLayer.reason}`, {
      jobTypes: processTypes.map((t) => t.name),
    });
  }
  const resources = resourceLayer(d, processTypes, osLayer.available);
  for (const t of d.types) {
    const layers =
      t.sandbox === 'thread'
        ? ['thread (bounds time and memory; no security boundary)']
        : [
            'process',
            'permission-model',
            ...(osLayer.available ? ['namespaces'] : []),
            ...(t.egress !== 'none'
              ? [osLayer.available ? 'egress-proxy' : 'egress-proxy (advisory without namespaces)']
              : []),
            ...(resources.cgroups
              ? [
                  `cgroup (memory ${t.memoryLimitMb} MB, ${t.maxProcesses} processes, cpu weight ${t.cpuWeight}${t.cpuQuotaPercent ? `, quota ${t.cpuQuotaPercent}%` : ''})`,
                ]
              : []),
            ...(resources.rlimits
              ? [`rlimits (no core, ${t.maxOpenFiles} files, ${t.maxFileSizeMb} MB file size)`]
              : []),
            ...(resources.seccomp && osLayer.available ? ['seccomp'] : []),
          ];
    d.log.info(`sandbox layers of ${t.name}: ${layers.join(', ')}`, {
      jobType: t.name,
      layers,
      egress: t.egress,
    });
  }
  const boundary: ProcessBoundary = {
    osLayer,
    forbiddenPaths: [d.config.dataDir],
    fleetAddresses: await fleetServiceAddresses(d.config, d.redisUrl),
    nice: sv.sandboxNice,
    resources,
  };
  let injections: InjectionRegistry | null = null;
  if (d.types.some((t) => [...t.secretModes.values()].includes('inject'))) {
    injections = new InjectionRegistry();
    boundary.inject = await injection(d, injections);
  }
  return { boundary, injections };
}

/**
 * Probes what the kernel can cap per process sandbox (cgroup, rlimits, seccomp) and says what is
 * missing, why, and the fix; with `supervisor.resourceLimits: "required"` a missing one stops
 * start-up. Thread sandboxes get none of them (they share this process).
 */
function resourceLayer(d: BoundaryDeps, processTypes: readonly JobType[], namespaces: boolean): ResourceLayer {
  const sv = d.config.supervisor;
  const layer = probeResourceLimits(sv.resourceLimits);
  if (!processTypes.length || sv.resourceLimits === 'off') return layer;
  weighSandboxes(sv.sandboxNice);
  const missing = [
    ...layer.reasons,
    ...(layer.seccomp && !namespaces
      ? ['seccomp: the filter is loaded by bubblewrap, and the OS layer is unavailable']
      : []),
  ];
  if (missing.length) {
    if (sv.resourceLimits === 'required')
      throw new ConfigError(
        `supervisor.resourceLimits is "required" but not every limit can be had here: ${missing.join('; ')}`,
      );
    d.log.warn(`process sandboxes run WITHOUT some kernel limits: ${missing.join('; ')}`, {
      jobTypes: processTypes.map((t) => t.name),
    });
  }
  return layer;
}

/**
 * Secrets injected at egress: the fleet egress CA (generated once under dataDir), the registry
 * of this supervisor's placeholders, and what a use or a refusal leaves in the audit trail.
 */
async function injection(
  d: BoundaryDeps,
  registry: InjectionRegistry,
): Promise<NonNullable<ProcessBoundary['inject']>> {
  const sv = d.config.supervisor;
  // Loaded only here: a supervisor without injected secrets never loads the X.509 library.
  const { EgressCa } = await import('./egress-ca.js');
  const ca = await EgressCa.load(path.join(d.config.dataDir, 'egress-ca'));
  let upstreamCa: string | undefined;
  if (sv.upstreamCaFile) {
    try {
      upstreamCa = readFileSync(sv.upstreamCaFile, 'utf8');
    } catch (err) {
      throw new ConfigError(
        `supervisor.upstreamCaFile: ${sv.upstreamCaFile} cannot be read (${toError(err).message}). Fix: point it at a PEM file of CA certificates.`,
      );
    }
  }
  /** First use of each (job, secret, destination): one audit record, not one per request. */
  const seen = new Set<string>();
  return {
    ca,
    registry,
    ...(upstreamCa ? { upstreamCa } : {}),
    maxBodyBytes: sv.injectMaxBodyBytes,
    onInjected: ({ injection: i, destination }) => {
      d.events.emit('secret:injected', { jobType: i.jobType, secret: i.secret });
      const key = `${i.jobId}\n${i.secret}\n${destination}`;
      if (seen.has(key)) return;
      seen.add(key);
      if (seen.size > 10_000) seen.clear();
      d.audit({
        action: 'inject',
        outcome: 'granted',
        secret: i.secret,
        jobId: i.jobId,
        jobType: i.jobType,
        workerId: d.workerId,
        provider: 'egress',
        latencyMs: 0,
        reason: destination,
      });
    },
    onRefused: (r) => {
      const jobType = r.jobType ?? '-';
      d.log.warn('secret placeholder refused at egress (possible exfiltration)', {
        jobType,
        jobId: r.jobId,
        secret: r.secret,
        destination: r.destination,
        reason: r.reason,
      });
      d.events.emit('secret:inject-refused', { jobType, secret: r.secret ?? '-' });
      d.audit({
        action: 'inject-refused',
        outcome: 'denied',
        secret: r.secret ?? '-',
        jobId: r.jobId ?? '-',
        jobType,
        workerId: d.workerId,
        provider: 'egress',
        latencyMs: 0,
        reason: `${r.destination}: ${r.reason}`,
      });
    },
  };
}
