/**
 * `fleet doctor` on Redis: each role's ACL user and what it is refused; the server's eviction
 * policy, persistence and default user.
 */
import type { FleetConfig } from '../../config/resolve.js';
import { toError } from '../../errors.js';
import { REDIS_ROLES, rolePasswordEnv, type RedisAccess } from '../../redis/acl.js';
import {
  aclGetUser,
  configGet,
  connectRedis,
  ensureReady,
  stringList,
  type RedisClient,
} from '../../redis/connection.js';
import { auditStreamKey } from '../../redis/keys.js';
import { fail, pass, warn, type Check, type DoctorOptions } from './check.js';

/**
 * Harmless forms of what no role may run: each does nothing even where it is allowed (trim below
 * the first id, delete an id that cannot exist, match keys that do not exist, read one setting).
 */
function forbiddenProbes(prefix: string): { what: string; args: [string, ...string[]] }[] {
  const audit = auditStreamKey(prefix);
  return [
    { what: 'CONFIG', args: ['CONFIG', 'GET', 'maxmemory'] },
    { what: 'KEYS', args: ['KEYS', `${prefix}:doctor-probe-none-*`] },
    { what: 'DEBUG', args: ['DEBUG', 'SLEEP', '0'] },
    { what: 'ACL', args: ['ACL', 'LIST'] },
    { what: 'FUNCTION', args: ['FUNCTION', 'LIST', 'LIBRARYNAME', 'doctor-probe-none'] },
    { what: 'XDEL on the audit stream', args: ['XDEL', audit, '0-1'] },
    { what: 'XTRIM on the audit stream', args: ['XTRIM', audit, 'MINID', '0'] },
    { what: 'RENAME on the audit stream', args: ['RENAME', audit, audit] },
    // PERSIST (no TTL to remove) stands for the keyspace writes (DEL, EXPIRE, UNLINK): one rule allows or refuses them all.
    { what: 'keyspace writes (DEL, EXPIRE) on the audit stream', args: ['PERSIST', audit] },
  ];
}

/** Per role: its own ACL user (not `default`), and refused on every forbidden command. */
export async function redisRoleChecks(config: FleetConfig, access: RedisAccess, production: boolean): Promise<Check[]> {
  const out: Check[] = [];
  for (const role of REDIS_ROLES) {
    const what = `redis role ${role}`;
    if (!access.hasRole(role)) {
      out.push(
        (production ? fail : warn)(
          what,
          `no credentials of its own (${rolePasswordEnv(role)}): it connects with REDIS_URL's identity, which can do anything`,
          'run `fleet redis setup` with an admin REDIS_URL and give each role its password',
        ),
      );
      continue;
    }
    const redis = connectRedis(access.urlFor(role), 'producer', { lazyConnect: true, tls: config.redis.tls });
    redis.on('error', () => undefined);
    try {
      await ensureReady(redis);
      const user = String(await redis.call('ACL', 'WHOAMI'));
      if (user === 'default') {
        out.push(fail(what, 'runs as the `default` user', 'run `fleet redis setup` and use the fleet-<role> users'));
        continue;
      }
      const allowed: string[] = [];
      for (const probe of forbiddenProbes(config.redis.prefix)) {
        const args = probe.args;
        if (probe.what.startsWith('XTRIM') && role === 'retention') continue;
        try {
          await redis.call(...args);
          allowed.push(probe.what);
        } catch (err) {
          // DEBUG may also be refused by the server itself (enable-debug-command no), before the ACL.
          if (!/NOPERM|DEBUG command not allowed/.test(toError(err).message))
            allowed.push(`${probe.what} (answered: ${toError(err).message.slice(0, 60)})`);
        }
      }
      out.push(
        allowed.length
          ? fail(
              what,
              `user ${user} may run ${allowed.join(', ')}: more than the role needs`,
              'run `fleet redis setup` again to reset its rules',
            )
          : pass(
              what,
              `user ${user}, refused CONFIG, KEYS, DEBUG, ACL and deleting or trimming the audit stream${role === 'retention' ? ' (may trim: the retention path)' : ''}`,
            ),
      );
    } catch (err) {
      out.push(
        fail(
          what,
          `cannot connect as its user: ${toError(err).message}`,
          `check ${rolePasswordEnv(role)} and that \`fleet redis setup\` ran on this Redis`,
        ),
      );
    } finally {
      redis.disconnect();
    }
  }
  return out;
}

/** Redis: no eviction and persistence; the default user that the AOF replays as. */
export async function redisServerChecks(
  config: FleetConfig,
  redis: RedisClient,
  options: DoctorOptions,
): Promise<Check[]> {
  const out: Check[] = [];
  // CONFIG needs an admin identity (the roles may not read it): the embedded server's, or REDIS_URL's own.
  const adminUrl = options.access?.admin ? options.access.adminUrl() : options.access?.url;
  const admin = adminUrl ? connectRedis(adminUrl, 'producer', { lazyConnect: true, tls: config.redis.tls }) : redis;
  admin.on('error', () => undefined);
  try {
    if (admin !== redis) await ensureReady(admin);
    const policy = await configGet(admin, 'maxmemory-policy');
    out.push(
      policy === 'noeviction'
        ? pass('redis: eviction policy', 'noeviction')
        : fail(
            'redis: eviction policy',
            policy,
            'redis-server --maxmemory-policy noeviction (evicted keys are lost jobs)',
          ),
    );
    const aof = await configGet(admin, 'appendonly');
    const save = await configGet(admin, 'save');
    if (aof === 'yes') {
      out.push(pass('redis: persistence', 'AOF on'));
      // Redis replays the AOF's MULTI/EXEC blocks as `default` and re-checks its ACL (redis/redis#14541).
      const user = await aclGetUser(admin, 'default');
      if (user) {
        const flags = stringList(user.get('flags'));
        const commands = String(user.get('commands') ?? '');
        out.push(
          flags.includes('off') || !commands.startsWith('+@all')
            ? fail(
                'redis: default user and AOF',
                `the default user is ${flags.includes('off') ? 'off' : `restricted (${commands.slice(0, 40)})`}: Redis replays the AOF's transactions as default and drops the ones it may not run (redis/redis#14541), so a restart silently loses jobs and audit records`,
                'keep default on with +@all ~* &* behind a strong password (it is the admin); give the fleet the fleet-<role> users',
              )
            : flags.includes('nopass')
              ? (options.production ? fail : warn)(
                  'redis: default user',
                  'no password: whoever reaches Redis has every right, and the per-role users protect nothing',
                  'requirepass <strong password> (default stays the admin); the fleet uses the fleet-<role> users',
                )
              : pass(
                  'redis: default user and AOF',
                  'default keeps its rights (AOF transactions replay), behind a password',
                ),
        );
      }
    } else if (save)
      out.push(
        warn(
          'redis: persistence',
          `RDB snapshots only (${save}): jobs since the last snapshot are lost on a crash`,
          'redis-server --appendonly yes',
        ),
      );
    else
      out.push(
        (options.production ? fail : warn)(
          'redis: persistence',
          'none: a restart loses every queued job',
          'redis-server --appendonly yes',
        ),
      );
  } catch (err) {
    out.push(
      warn(
        'redis: settings',
        `could not read CONFIG (${toError(err).message}); managed Redis, or REDIS_URL without an admin user?`,
        'confirm noeviction and persistence with your provider, or run fleet doctor with an admin user in REDIS_URL',
      ),
    );
  } finally {
    if (admin !== redis) admin.disconnect();
  }
  return out;
}
