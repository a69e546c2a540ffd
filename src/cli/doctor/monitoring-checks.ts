/** `fleet doctor` on monitoring: the /metrics endpoints answer and Prometheus scrapes the fleet. */
import { z } from 'zod';
import { toError } from '../../errors.js';
import { fail, pass, warn, type Check, type DoctorOptions } from './check.js';

/** The part of Prometheus's /api/v1/targets answer the monitoring check reads. */
const prometheusTargets = z.object({
  data: z.object({ activeTargets: z.array(z.object({ labels: z.object({ job: z.string() }), health: z.string() })) }),
});

/** Monitoring: the metrics endpoints answer and Prometheus scrapes the fleet. */
export async function monitoringChecks(
  options: Pick<DoctorOptions, 'metricsUrls' | 'prometheusUrl'>,
): Promise<Check[]> {
  const out: Check[] = [];
  if (!options.metricsUrls.length)
    out.push(
      warn('monitoring: metrics endpoint', 'no --metrics-url given', 'pass the API and supervisor /metrics URLs'),
    );
  for (const url of options.metricsUrls) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
      const body = await r.text();
      out.push(
        r.ok && body.includes('fleet_')
          ? pass(`monitoring: ${url}`, 'serves fleet metrics')
          : fail(`monitoring: ${url}`, `HTTP ${r.status}`, 'is the process running with that port?'),
      );
    } catch (err) {
      out.push(fail(`monitoring: ${url}`, toError(err).message, 'is the process running with that port?'));
    }
  }
  if (options.prometheusUrl) {
    try {
      const r = prometheusTargets.parse(
        await (await fetch(`${options.prometheusUrl}/api/v1/targets`, { signal: AbortSignal.timeout(3000) })).json(),
      );
      const fleet = r.data.activeTargets.filter((t) => t.labels.job.startsWith('fleet'));
      const down = fleet.filter((t) => t.health !== 'up');
      out.push(
        !fleet.length
          ? fail(
              'monitoring: prometheus targets',
              'no fleet-* scrape jobs',
              'add the fleet to the scrape config (deploy/prometheus.yml)',
            )
          : down.length
            ? fail('monitoring: prometheus targets', `${down.length} of ${fleet.length} down`, 'check the targets page')
            : pass('monitoring: prometheus targets', `${fleet.length} fleet targets up`),
      );
    } catch (err) {
      out.push(fail('monitoring: prometheus', toError(err).message, 'check --prometheus-url'));
    }
  }
  return out;
}
