import { Writable } from 'node:stream';
import { makeLogger, type Logger } from '../../src/observability/logger.js';
import type { TlsFiles } from '../../src/config/tls.js';
import { dumpKeys } from './redis.js';

/** A logger whose JSON lines are kept for inspection. */
export function capturingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { logger: makeLogger({ level: 'debug', destination: destination as never }), lines };
}

/** The forms a leaked value could take. */
export function leakForms(value: string): string[] {
  const b = Buffer.from(value);
  return [
    value,
    b.toString('base64'),
    b.toString('base64').replace(/=+$/, ''),
    b.toString('base64url'),
    encodeURIComponent(value),
    b.toString('hex'),
  ];
}

/**
 * Searches every Redis key and value under `pattern`, plus the given texts, for every form of
 * every secret value. Returns the hits (empty means no leak).
 */
export async function scanForLeaks(
  redisUrl: string,
  values: string[],
  texts: Record<string, string>,
  pattern = '*',
  tls?: TlsFiles,
): Promise<string[]> {
  const keys = await dumpKeys(redisUrl, pattern, tls);
  const haystacks: [string, string][] = [
    ...[...keys].map(([k, v]) => [`redis ${k}`, `${k}\n${v}`] as [string, string]),
    ...Object.entries(texts),
  ];
  const hits: string[] = [];
  for (const v of values) {
    for (const form of leakForms(v)) {
      for (const [where, text] of haystacks)
        if (text.includes(form)) hits.push(`${where} contains a form of a secret value (${form.slice(0, 3)}…)`);
    }
  }
  return hits;
}
