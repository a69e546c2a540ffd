import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { utf8Bytes } from '../bytes.js';
import { ConfigError } from '../errors.js';

// The rotator module shape lives with the other module shapes a sandbox loads (processor-api).
import { rotatorOf, type Rotator } from '../workers/processor-api.js';
export type { Rotator, RotatorContext } from '../workers/processor-api.js';

export type RotatorConfig =
  | { type: 'random'; bytes: number; encoding: 'hex' | 'base64' | 'base64url' }
  | { type: 'kms-rewrap' }
  | { type: 'module'; path: string }
  | { type: 'redis-acl'; role: 'api' | 'worker' | 'scheduler' | 'ops' | 'retention'; adminUrlEnv: string };

/** Random token of `bytes` bytes, encoded as text (what most API keys we mint ourselves look like). */
export function randomRotator(bytes: number, encoding: 'hex' | 'base64' | 'base64url'): Rotator {
  return {
    create: () => {
      const raw = randomBytes(bytes);
      const out = utf8Bytes(raw.toString(encoding));
      raw.fill(0);
      return out;
    },
  };
}

export async function loadRotator(cfg: RotatorConfig): Promise<Rotator | 'kms-rewrap'> {
  if (cfg.type === 'random') return randomRotator(cfg.bytes, cfg.encoding);
  if (cfg.type === 'kms-rewrap') return 'kms-rewrap';
  if (cfg.type === 'redis-acl')
    throw new ConfigError('redis-acl rotators are built by the rotation service (they need the key prefix)');
  if (/\.[cm]?ts$/.test(cfg.path)) {
    const { register } = await import('tsx/esm/api');
    register();
  }
  const r = rotatorOf(await import(pathToFileURL(cfg.path).href));
  if (!r)
    throw new ConfigError(
      `rotator module ${cfg.path} exports no create(ctx) function. Fix: export { create, set?, test?, finish? } or a default object with them.`,
    );
  return r;
}
