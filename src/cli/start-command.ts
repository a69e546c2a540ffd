/** `fleet start`: runs one role of the fleet until SIGTERM or SIGINT, then drains. */
import { ROLES, startFleet } from '../app.js';
import { FleetError } from '../errors.js';
import { isOneOf } from '../guards.js';
import { makeLogger } from '../observability/logger.js';
import type { CommandContext } from './command.js';

/** `fleet start [--role api|worker|scheduler|all] [--metrics-port N]`: resolves only after shutdown. */
export async function startCommand({ config, opts }: CommandContext): Promise<number> {
  const role = opts.role;
  if (!isOneOf(ROLES, role)) throw new FleetError('INVALID_REQUEST', `--role must be one of ${ROLES.join(', ')}`);
  const logger = makeLogger();
  // Several supervisors on one host each need their own metrics port: flag > env > config.
  const portText = opts['metrics-port'] ?? process.env.FLEET_METRICS_PORT;
  const metricsPort = portText === undefined ? undefined : Number(portText);
  if (metricsPort !== undefined && !(Number.isInteger(metricsPort) && metricsPort >= 0 && metricsPort <= 65535)) {
    throw new FleetError(
      'CONFIG_INVALID',
      `--metrics-port / FLEET_METRICS_PORT must be a port number 0–65535 (0 picks a free one); got "${portText}"`,
    );
  }
  // Signal handlers go in before start-up, so a SIGTERM that arrives while it runs still drains.
  let fleet: Awaited<ReturnType<typeof startFleet>> | null = null;
  let signalled = false;
  let stop!: () => void;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  const onSignal = (sig: NodeJS.Signals): void => {
    if (signalled) {
      logger.warn(`second ${sig}: exiting now`);
      process.exit(130);
    }
    signalled = true;
    logger.info(`${sig} received: draining`);
    if (fleet) void fleet.release().then(stop);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  fleet = await startFleet({
    config,
    role,
    logger,
    ...(metricsPort !== undefined ? { metricsPort } : {}),
  });
  if (signalled) void fleet.release().then(stop);
  await stopped;
  return 0;
}
