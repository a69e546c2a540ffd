import type { TlsFiles } from '../config/tls.js';
import { ConfigError } from '../errors.js';
import { withConnection, type RedisClient } from '../redis/connection.js';
import { roleUsername, setupRoleUsers, urlWithCredential, type RedisRole } from '../redis/acl.js';
import { randomRotator, type Rotator } from './rotators.js';

/**
 * Rotates the password of one fleet Redis role (the secret's value is the password): `set` adds the
 * new password to the role's user on every node, keeping the current one valid; `test` logs in
 * with it; `finish`, when the previous version retires after the grace window, removes every
 * password but the current one. Processes of that role pick the new password up from the secret
 * store (e.g. a Vault Agent template rendering `FLEET_REDIS_<ROLE>_PASSWORD_FILE`) and reconnect
 * within the grace window; connections already logged in are not cut by Redis.
 */
export function redisAclRotator(options: {
  role: RedisRole;
  prefix: string;
  adminUrlEnv: string;
  /** The PEM files for a rediss:// admin URL (config.redis.tls). */
  tls: TlsFiles;
}): Rotator {
  const username = roleUsername(options.role);
  const adminUrl = (): string => {
    const url = process.env[options.adminUrlEnv];
    if (!url)
      throw new ConfigError(
        `rotating the Redis password of role ${options.role} needs an admin Redis URL in ${options.adminUrlEnv} (the scheduler's environment). It lets the scheduler change ACL users: give it only where this rotation runs.`,
      );
    return url;
  };
  const admin = <T>(fn: (r: RedisClient) => Promise<T>): Promise<T> =>
    withConnection(adminUrl(), { tls: options.tls }, fn);
  const text = (v: Uint8Array): string => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('utf8');
  return {
    create: randomRotator(24, 'hex').create,
    set: (_ctx, value) =>
      admin((r) =>
        setupRoleUsers(r, {
          prefix: options.prefix,
          roles: [options.role],
          passwords: { [options.role]: { username, password: text(value) } },
          keepOld: true,
        }),
      ).then(() => undefined),
    test: (_ctx, value) =>
      withConnection(
        urlWithCredential(adminUrl(), { username, password: text(value) }),
        { tls: options.tls },
        async (r) => {
          const who = String(await r.call('ACL', 'WHOAMI'));
          if (who !== username) throw new Error(`logged in as ${who}, not ${username}`);
        },
      ),
    finish: async (ctx) => {
      const current = await ctx.current();
      try {
        await admin((r) =>
          setupRoleUsers(r, {
            prefix: options.prefix,
            roles: [options.role],
            passwords: { [options.role]: { username, password: current.toString('utf8') } },
            dropOld: true,
          }),
        );
      } finally {
        current.fill(0);
      }
    },
  };
}
