import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type express from 'express';
import type { ProducerAuth } from './auth.js';
import type { Producer } from '../producers/producer.js';

/** Field names whose values Bull Board never shows, even though job data should hold no secrets. */
const SENSITIVE_KEY = /secret|token|password|passwd|credential|api[-_]?key|private|authorization|cookie|session/i;

export function maskFields(value: unknown, depth = 0): unknown {
  if (depth > 20 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => maskFields(v, depth + 1));
  return Object.fromEntries(
    Object.entries(value).map(([k, v]) => [k, SENSITIVE_KEY.test(k) ? '***' : maskFields(v, depth + 1)]),
  );
}

/**
 * Bull Board at `path`, for admin producers only (HTTP Basic with the admin token as password, or
 * a Bearer token), read-only unless configured otherwise. Job data and results pass a formatter
 * that masks sensitive-looking fields and lists the job type's secret *references*.
 */
export function mountBullBoard(
  app: express.Express,
  options: { producer: Producer; auth: ProducerAuth; path: string; readOnly: boolean },
): void {
  const { producer, auth } = options;
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(options.path);
  const queues = [...producer.config.jobTypes.values()].map((t) => {
    const adapter = new BullMQAdapter(producer.queue(t.name), {
      readOnlyMode: options.readOnly,
      allowRetries: !options.readOnly,
      description: t.description,
    });
    adapter.setFormatter('data', (data: unknown) => ({
      ...Object(maskFields(data)),
      ...(t.secrets.length ? { '(secret references)': t.secrets } : {}),
    }));
    adapter.setFormatter('returnValue', (v: unknown) => maskFields(v));
    adapter.setFormatter('progress', (v: unknown) => maskFields(v));
    return adapter;
  });
  createBullBoard({ queues, serverAdapter });
  app.use(
    options.path,
    (req, res, next) => {
      const header = req.get('authorization') ?? '';
      let bearer = header;
      const basic = /^Basic (.+)$/.exec(header)?.[1];
      if (basic !== undefined) {
        const decoded = Buffer.from(basic, 'base64').toString('utf8');
        bearer = `Bearer ${decoded.slice(decoded.indexOf(':') + 1)}`;
      }
      try {
        const p = auth.authenticate(bearer || undefined);
        if (!p.admin) throw new Error('not an admin producer');
        next();
      } catch {
        res.setHeader('WWW-Authenticate', 'Basic realm="fleet queues", charset="UTF-8"');
        res.status(401).json({
          error: {
            code: 'UNAUTHENTICATED',
            message: 'Bull Board needs an admin producer token (HTTP Basic password or Bearer).',
          },
        });
      }
    },
    // Bull Board's adapter leaves its router untyped; it is an Express router.
    serverAdapter.getRouter(),
  );
}
