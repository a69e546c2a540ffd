import { createHmac } from 'node:crypto';
import type { Processor } from 'fleet';

/**
 * Demo: signs a webhook body with a secret the job type is scoped to. The key arrives as bytes at
 * job start and is zeroed when the job ends; it never appears in the result, logs or Redis.
 */
const signWebhook: Processor<{ url: string; body: string }> = async (job, ctx) => {
  const key = await ctx.secrets.get('webhook-signing-key');
  const signature = createHmac('sha256', key).update(job.data.body).digest('hex');
  ctx.log.info('signed webhook', { url: job.data.url, bytes: job.data.body.length });
  return { url: job.data.url, signature: `sha256=${signature}` };
};
export default signWebhook;
