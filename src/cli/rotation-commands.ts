/** `fleet rotate` (a secret, outside its schedule) and `fleet kms` (the KMS customer key). */
import { FleetError, fieldOf } from '../errors.js';
import { makeLogger } from '../observability/logger.js';
import { requestRotation, rotationQueue } from '../rotation/rotation-service.js';
import { withRedis, type CommandContext } from './command.js';

/** `fleet rotate <secret> [--now]`: queues the rotation; with --now waits for its outcome. */
export async function rotateCommand({ config, opts, args, print }: CommandContext): Promise<number> {
  const [secret] = args;
  if (!secret) throw new FleetError('INVALID_REQUEST', 'usage: fleet rotate <secret> [--now]');
  const out: { secret: string; jobId: string | undefined; state: string; version?: string; error?: string } =
    await withRedis(config, 'scheduler', async (r) => {
      const queue = rotationQueue(config, r);
      try {
        const job = await requestRotation(config, queue, secret);
        if (!opts.now) return { secret, jobId: job.id, state: 'queued' };
        for (;;) {
          const state = await job.getState();
          const fresh = job.id === undefined ? undefined : await queue.getJob(job.id);
          if (!fresh) throw new FleetError('INTERNAL', `rotation job ${job.id} of ${secret} vanished from Redis`);
          if (state === 'completed' || (state === 'failed' && fresh.finishedOn)) {
            return {
              secret,
              jobId: job.id,
              state,
              ...(state === 'completed'
                ? { version: String(fieldOf(fresh.returnvalue, 'version')) }
                : { error: fresh.failedReason }),
            };
          }
          await new Promise((res) => setTimeout(res, 100));
        }
      } finally {
        await queue.close();
      }
    });
  print(
    out.state === 'completed'
      ? `${secret}: rotated to version ${out.version}`
      : out.state === 'queued'
        ? `${secret}: rotation queued (${out.jobId}); a scheduler role runs it`
        : `${secret}: rotation failed: ${out.error}`,
    out,
  );
  return out.state === 'failed' ? 1 : 0;
}

/** `fleet kms rotate-key | ensure-key` */
export async function kmsCommand({ config, args, print }: CommandContext): Promise<number> {
  const action = args[0];
  if (action !== 'rotate-key' && action !== 'ensure-key')
    throw new FleetError('INVALID_REQUEST', 'usage: fleet kms rotate-key | fleet kms ensure-key');
  if (!config.secrets.kms)
    throw new FleetError(
      'CONFIG_INVALID',
      'secrets.kms is not configured. Fix: add secrets.kms { keyId, region } to the config.',
    );
  const keyId = config.secrets.kms.keyId;
  const out = await withRedis(config, 'scheduler', async (r) => {
    const { makeProvider, providerOfKind } = await import('../secrets/providers.js');
    const kms = providerOfKind(
      await makeProvider('kms', config, { redis: r, logger: makeLogger({ level: 'silent' }) }),
      'kms',
    );
    try {
      if (action === 'ensure-key') return await kms.ensureKey();
      await kms.rotateKeyNow();
      return null;
    } finally {
      await kms.close();
    }
  });
  if (out)
    print(out.created ? `KMS key ${keyId}: created (${out.keyId})` : `KMS key ${keyId}: exists (${out.keyId})`, {
      keyId,
      kmsKeyId: out.keyId,
      created: out.created,
    });
  else print(`KMS key ${keyId}: rotated on demand (existing data keys stay decryptable)`, { keyId, rotated: true });
  return 0;
}
