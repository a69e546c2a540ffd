import { z } from 'zod';
import { defineConfig } from './src/config/resolve.js';

/**
 * The demo fleet that `npm start` runs. Processors point at compiled JS (`build/examples/`, built by
 * `npm start`); your own may be `.ts` files too (type-stripped natively in process sandboxes).
 */
export default defineConfig({
  jobTypes: [
    {
      name: 'echo',
      description: 'Returns the message it is given.',
      processor: './build/examples/demo/echo.js',
      payloadSchema: z.object({ message: z.string().max(10_000) }),
      isolation: 'pool',
      concurrency: 8,
      timeoutMs: 10_000,
    },
    {
      name: 'hash',
      description: 'Hashes text many times (CPU work, progress, cancellation).',
      processor: './build/examples/demo/hash.js',
      payloadSchema: z.object({ text: z.string(), rounds: z.number().int().min(1).max(10_000_000) }),
      sensitivity: 'critical',
      isolation: 'job',
      concurrency: 2,
      timeoutMs: 60_000,
    },
    {
      name: 'sign-webhook',
      description: 'Signs a webhook body with HMAC-SHA256 using a scoped secret.',
      processor: './build/examples/demo/sign-webhook.js',
      payloadSchema: z.object({ url: z.string().url(), body: z.string().max(100_000) }),
      sensitivity: 'critical',
      isolation: 'job',
      concurrency: 2,
      timeoutMs: 10_000,
      secrets: ['webhook-signing-key'],
    },
  ],
  secrets: {
    // Dev default: the encrypted local store under .fleet/. Production: 'vault' or 'kms'.
    provider: 'local',
    items: {
      'webhook-signing-key': {
        kind: 'api-key',
        description: 'HMAC key for outgoing webhooks',
        rotation: { schedule: 'weekly', rotator: { type: 'random', bytes: 32, encoding: 'hex' }, graceSeconds: 86_400 },
      },
    },
  },
});
