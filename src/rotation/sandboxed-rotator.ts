import type { FleetConfig } from '../config/resolve.js';
import { FleetError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { Sandbox } from '../workers/sandbox.js';
import { probeOsLayer, type Egress } from '../workers/sandbox-boundary.js';
import { fleetServiceAddresses } from '../workers/fleet-addresses.js';
import type { Rotator, RotatorContext } from './rotators.js';

export interface RotatorStepMessage {
  step: 'create' | 'set' | 'test' | 'finish';
  secret: string;
  current?: Uint8Array;
  value?: Uint8Array;
  retiredVersion?: string;
}

export interface RotatorStepOptions {
  timeoutMs: number;
  maxOldGenerationSizeMb: number;
  log: Logger;
  config: FleetConfig;
  /** Where the rotator may connect (the service whose credential it rotates). */
  egress: Egress;
}

/**
 * Runs one rotator step in a fresh process sandbox, the same primitive as job processors (empty
 * environment, permission model, namespaces where available, egress policy, every output channel
 * masked), destroyed afterwards. Values travel like a job's secrets (`current`, `value`) and are
 * zero-filled here once sent; a created value comes back as bytes. Killed at `timeoutMs`.
 */
export async function runRotatorStep(
  rotatorPath: string,
  msg: RotatorStepMessage,
  options: RotatorStepOptions,
): Promise<Uint8Array | undefined> {
  const { config, log } = options;
  const secrets = (['current', 'value'] as const).flatMap((name) =>
    msg[name] ? [{ name, value: msg[name], version: '' }] : [],
  );
  const jobType = `rotator:${msg.secret}`;
  let sandbox: Sandbox;
  try {
    sandbox = await Sandbox.start({
      kind: 'rotator',
      processorPath: rotatorPath,
      jobType,
      maxResultBytes: 1024,
      maxOldGenerationSizeMb: options.maxOldGenerationSizeMb,
      process: {
        osLayer: await probeOsLayer(config.supervisor.osLayer, config.supervisor.bwrapPath),
        egress: options.egress,
        tmpSizeMb: 16,
        readPaths: [],
        forbiddenPaths: [config.dataDir],
        fleetAddresses: await fleetServiceAddresses(config, config.redis.url ?? ''),
        onEgressRefused: (r) =>
          log.warn('rotator egress refused', {
            secret: msg.secret,
            step: msg.step,
            destination: r.destination,
            reason: r.reason,
          }),
      },
    });
  } catch (err) {
    for (const s of secrets) s.value.fill(0);
    throw err;
  }
  try {
    const r = await sandbox.run(
      {
        type: 'run',
        jobId: `rotation:${msg.secret}:${msg.step}`,
        jobType,
        attempt: 1,
        data: {
          step: msg.step,
          secret: msg.secret,
          ...(msg.retiredVersion ? { retiredVersion: msg.retiredVersion } : {}),
        },
        secretNames: secrets.map((s) => s.name),
        secrets,
      },
      {
        timeoutMs: options.timeoutMs,
        abortGraceMs: Math.min(1000, options.timeoutMs / 2),
        onLog: (_level, m) => log.info(m, { secret: msg.secret, step: msg.step, source: 'rotator' }),
      },
    );
    if (msg.step === 'create' && !r.value)
      throw new FleetError('INTERNAL', `rotator ${rotatorPath} returned no value from create`);
    return r.value;
  } finally {
    await sandbox.destroy();
  }
}

/**
 * A module rotator whose every step runs in a fresh process sandbox (runRotatorStep), given only
 * this secret's current value (and the new one), as bytes.
 */
export function sandboxedRotator(secret: string, rotatorPath: string, options: RotatorStepOptions): Rotator {
  const current = async (ctx: RotatorContext): Promise<{ current?: Uint8Array }> => {
    const cur = await ctx.current().catch(() => null);
    return cur ? { current: new Uint8Array(cur) } : {};
  };
  const withValue =
    (step: 'set' | 'test') =>
    async (ctx: RotatorContext, value: Uint8Array): Promise<void> =>
      void (await runRotatorStep(
        rotatorPath,
        { step, secret, value: new Uint8Array(value), ...(await current(ctx)) },
        options,
      ));
  return {
    create: async (ctx) => {
      const v = await runRotatorStep(rotatorPath, { step: 'create', secret, ...(await current(ctx)) }, options);
      if (!v) throw new FleetError('INTERNAL', `rotator ${rotatorPath} returned no value from create`);
      return v;
    },
    set: withValue('set'),
    test: withValue('test'),
    finish: async (ctx) =>
      void (await runRotatorStep(rotatorPath, { step: 'finish', secret, retiredVersion: ctx.retiredVersion }, options)),
  };
}
