/** `fleet doctor` on sandboxes: isolation and limits per job type, and the OS layer the running supervisors report. */
import type { FleetConfig } from '../../config/resolve.js';
import { CRITICAL_MAX_TIMEOUT_MS } from '../../config/schema.js';
import type { RedisClient } from '../../redis/connection.js';
import { supervisorsKey } from '../../redis/keys.js';
import { readSupervisorStatuses } from '../../workers/supervisor-status.js';
import { fail, pass, warn, type Check } from './check.js';

/** Critical work: request-bound execution with a short timeout; concurrency caps. */
export function isolationChecks(config: FleetConfig): Check[] {
  const out: Check[] = [];
  for (const t of config.jobTypes.values()) {
    if (t.sensitivity === 'critical') {
      out.push(
        t.isolation === 'job' && t.timeoutMs <= CRITICAL_MAX_TIMEOUT_MS
          ? pass(
              `job type ${t.name}: critical isolation`,
              `fresh sandbox per job (auto-destroy), timeout ${t.timeoutMs} ms`,
            )
          : fail(
              `job type ${t.name}: critical isolation`,
              `isolation ${t.isolation}, timeout ${t.timeoutMs} ms`,
              'isolation "job" and timeoutMs ≤ 120000',
            ),
      );
      out.push(
        t.globalConcurrency !== undefined
          ? pass(
              `job type ${t.name}: concurrency caps`,
              `${t.concurrency} per supervisor, ${t.globalConcurrency} fleet-wide`,
            )
          : warn(
              `job type ${t.name}: concurrency caps`,
              `${t.concurrency} per supervisor, no fleet-wide cap`,
              `set jobTypes.${t.name}.globalConcurrency`,
            ),
      );
    } else {
      out.push(
        pass(
          `job type ${t.name}: concurrency caps`,
          `${t.concurrency} per supervisor${t.globalConcurrency ? `, ${t.globalConcurrency} fleet-wide` : ''}`,
        ),
      );
      if (t.timeoutMs > 300_000 && t.isolation === 'pool')
        out.push(
          warn(
            `job type ${t.name}: timeout`,
            `${t.timeoutMs} ms in a reused sandbox`,
            'routine work: ≤ 300 s, or a concurrency limit for long-running work',
          ),
        );
    }
  }
  return out;
}

/** Critical types need the OS layer (namespaces) in production. */
export async function osLayerChecks(config: FleetConfig, redis: RedisClient, production: boolean): Promise<Check[]> {
  const out: Check[] = [];
  // Without it a compromised processor keeps the host's network and can fill disk (see
  // docs/security.md#threat-model).
  const { live: reports, invalid } = await readSupervisorStatuses(
    redis,
    config.redis.prefix,
    config.supervisor.heartbeatMs,
  ).catch(() => ({ live: [], invalid: [] }));
  if (invalid.length)
    out.push(
      warn(
        'supervisors: heartbeats',
        `${invalid.length} record(s) in ${supervisorsKey(config.redis.prefix)} are not valid heartbeats: ${invalid.slice(0, 5).join(', ')}`,
        'find what writes them; only supervisors should (Redis ACLs)',
      ),
    );
  for (const t of config.jobTypes.values()) {
    if (t.sensitivity !== 'critical') continue;
    const seen = reports.flatMap((r) =>
      r.types.filter((x) => x.jobType === t.name && x.layers.length).map((x) => ({ id: r.id, layers: x.layers })),
    );
    const without = seen.filter((x) => !x.layers.includes('namespaces'));
    const what = `job type ${t.name}: sandbox OS layer`;
    if (!seen.length)
      out.push(warn(what, 'no running supervisor reports this type', 'start a worker, then run fleet doctor again'));
    else if (without.length)
      out.push(
        (production ? fail : warn)(
          what,
          `runs without namespaces on ${without.map((x) => x.id).join(', ')} (layers: ${without[0]?.layers.join('+')})`,
          'install bubblewrap and allow user namespaces on the worker hosts (docs/operations.md#deploy), or set supervisor.osLayer: "required"',
        ),
      );
    else out.push(pass(what, `${seen[0]?.layers.join('+')} on ${seen.length} supervisor(s)`));
    // And the kernel's caps: without a cgroup one job can take the memory and processes of every
    // other job on the host (docs/security.md#what-holds-with-and-without-the-os-layer).
    if (seen.length) {
      const uncapped = seen.filter((x) => !x.layers.includes('cgroup'));
      const limits = `job type ${t.name}: memory and process limits`;
      if (uncapped.length)
        out.push(
          (production ? fail : warn)(
            limits,
            `runs without a cgroup (memoryLimitMb ${t.memoryLimitMb}, maxProcesses ${t.maxProcesses} not enforced) on ${uncapped.map((x) => x.id).join(', ')}`,
            'run the supervisor with a writable cgroup subtree (root, systemd Delegate=yes, or a container with its own cgroup namespace; docs/security.md#resource-limits-from-the-kernel), or set supervisor.resourceLimits: "required"',
          ),
        );
      else out.push(pass(limits, `cgroup: ${t.memoryLimitMb} MB, ${t.maxProcesses} processes`));
    }
  }

  return out;
}
