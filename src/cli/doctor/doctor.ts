/**
 * `fleet doctor`: runs every check in a fixed order and renders the list. The checks live beside
 * this file, one file per area.
 */
import { discoverRedisAccess } from '../../app.js';
import type { FleetConfig } from '../../config/resolve.js';
import type { RedisClient } from '../../redis/connection.js';
import { withRedis, type CommandContext } from '../command.js';
import type { Check, DoctorOptions } from './check.js';
import { monitoringChecks } from './monitoring-checks.js';
import { redisRoleChecks, redisServerChecks } from './redis-checks.js';
import { isolationChecks, osLayerChecks } from './sandbox-checks.js';
import { auditChecks, injectionChecks, providerChecks, rotationChecks, secretSourceChecks } from './secret-checks.js';
import { transportChecks } from './transport-checks.js';

/**
 * The pre-deploy checklist of the zero-trust rules, as named checks in a fixed order.
 */
export async function doctor(config: FleetConfig, redis: RedisClient, options: DoctorOptions): Promise<Check[]> {
  const providers = await providerChecks(config, redis);
  return [
    ...transportChecks(config, { production: options.production, redisUrl: options.access?.url }),
    ...secretSourceChecks(config, options.production),
    ...injectionChecks(config),
    ...isolationChecks(config),
    ...(await osLayerChecks(config, redis, options.production)),
    ...(options.access ? await redisRoleChecks(config, options.access, options.production) : []),
    ...(await redisServerChecks(config, redis, options)),
    ...(await auditChecks(config, redis)),
    ...providers.checks,
    ...(await rotationChecks(config, redis, providers.meta)),
    ...(await monitoringChecks(options)),
  ];
}

/** One line per check: status, name, detail and (WARN, FAIL) the fix. */
export function renderChecks(checks: Check[]): string {
  return checks
    .map((c) => `${c.status.padEnd(4)}  ${c.check}: ${c.detail}${c.fix ? `  → fix: ${c.fix}` : ''}`)
    .join('\n');
}

/** `fleet doctor [--production] [--metrics-url U]... [--prometheus-url U]`: exits 1 if any check fails. */
export async function doctorCommand({ config, opts, print }: CommandContext): Promise<number> {
  const checks = await withRedis(config, 'ops', (r) =>
    doctor(config, r, {
      access: discoverRedisAccess(config),
      production: opts.production,
      metricsUrls: opts['metrics-url'] ?? [],
      ...(opts['prometheus-url'] ? { prometheusUrl: opts['prometheus-url'] } : {}),
    }),
  );
  const failed = checks.filter((c) => c.status === 'FAIL').length;
  const warned = checks.filter((c) => c.status === 'WARN').length;
  print(
    `${renderChecks(checks)}\n\n${checks.length} checks: ${checks.length - failed - warned} pass, ${warned} warn, ${failed} fail`,
    { checks, failed, warned },
  );
  return failed ? 1 : 0;
}
