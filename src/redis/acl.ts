import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Cluster } from 'ioredis';
import { z } from 'zod';
import { ConfigError, FleetError, errorMessage } from '../errors.js';
import { aclGetUser, stringList, type RedisClient } from './connection.js';
import { auditHeadsKey, auditStreamKey, controlChannel, keyPatterns, secretStatsKey } from './keys.js';

/**
 * Redis ACL users, one per fleet role, so that a leaked credential of one component can do only
 * that component's work. `retention` is the one identity allowed to trim the audit stream.
 */
export type RedisRole = 'api' | 'worker' | 'scheduler' | 'ops' | 'retention';
export const REDIS_ROLES: readonly RedisRole[] = ['api', 'worker', 'scheduler', 'ops', 'retention'];

export const ROLE_PURPOSE: Record<RedisRole, string> = {
  api: 'HTTP API and `fleet enqueue`: enqueue, read and cancel jobs; read the audit trail and KMS envelopes (the data key)',
  worker: 'supervisors: take and finish jobs, append audit records, heartbeats, read KMS envelopes',
  scheduler:
    'rotation service and `fleet rotate`/`fleet secrets`: rotation queue and state, KMS envelopes, append audit records, read job queues (data key retirement)',
  ops: '`fleet status`, `fleet audit`, `fleet audit verify`, Bull Board: read only',
  retention: 'audit retention (in the scheduler): write a signed checkpoint, then trim the audit stream',
};

/** What no fleet role may ever run; `fleet doctor` and the tests check each of these is refused. */
export const FORBIDDEN_COMMANDS = [
  'flushall',
  'flushdb',
  'config',
  'keys',
  'debug',
  'module',
  'script|flush',
  'function',
  'acl|setuser',
  'acl|deluser',
  'shutdown',
  'monitor',
  'migrate',
  'restore',
  'swapdb',
  'replicaof',
] as const;

/** Connection housekeeping every role needs (ioredis ready check, cluster topology, client names). */
const BASE = [
  '+ping',
  '+echo',
  '+info',
  '+select',
  '+quit',
  '+readonly',
  '+readwrite',
  '+client|setname',
  '+client|getname',
  '+client|id',
  '+acl|whoami',
  '+cluster|slots',
  '+cluster|shards',
  '+cluster|nodes',
  '+cluster|info',
  '+cluster|myid',
];

/** BullMQ: its Lua scripts run with the caller's rights, so these cover what the scripts call. */
const QUEUE_COMMANDS = [
  '+@read',
  '+@write',
  '+@transaction',
  '+eval',
  '+evalsha',
  '+script|load',
  '+script|exists',
  '+bzpopmin',
  '+blmove',
  '+brpoplpush',
  '-@dangerous',
  '-function',
  '-rename',
  '-renamenx',
];

/** Read-only commands. */
const READ_COMMANDS = ['+@read', '-@dangerous', '-keys'];

/**
 * BullMQ reads through Lua scripts too (job counts, job state). EVAL asks for write access to the
 * keys it declares, so `%R~` does not do for a script: the ops role gets `~` on the fleet's keys and
 * read-only commands, and a script's calls are checked against the same rules (a write inside
 * one is refused).
 */
const READ_SCRIPTS = ['+eval', '+evalsha', '+script|load', '+script|exists', '+client|list'];

/** Appending to the audit trail: XADD, the per-secret counters and the chain heads, in one MULTI. */
const AUDIT_APPEND = [
  '+xadd',
  '+hincrby',
  '+hset',
  '+multi',
  '+exec',
  '+discard',
  '+xrevrange',
  '+xrange',
  '+hget',
  '+hgetall',
  '+hmget',
  '+xlen',
];

const keys = (patterns: readonly string[], mode: '' | '%R' = ''): string[] => patterns.map((p) => `${mode}~${p}`);
const selector = (rules: readonly string[]): string => `(${rules.join(' ')})`;

/**
 * The ACL rules of a role, as `ACL SETUSER` arguments after the password (root rules first, then
 * selectors). Built from `keyPatterns` so they follow the key layout in one place.
 */
export function roleRules(
  role: RedisRole,
  prefix: string,
  server: RedisServerFeatures = { clientSetinfo: false },
): string[] {
  // Housekeeping goes last: the role's own sets remove @dangerous, which holds INFO. CLIENT SETINFO
  // (client libraries announce themselves) exists from Redis 7.2; naming an unknown command is an
  // error in an ACL rule.
  return [
    'resetkeys',
    'resetchannels',
    '-@all',
    ...rulesOf(role, prefix),
    ...BASE,
    ...(server.clientSetinfo ? ['+client|setinfo'] : []),
  ];
}

/** What the target server knows, where ACL rules depend on it. */
export interface RedisServerFeatures {
  clientSetinfo: boolean;
}

/** From a version string such as `7.0.15`. */
export function serverFeatures(version: string): RedisServerFeatures {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return { clientSetinfo: major > 7 || (major === 7 && minor >= 2) };
}

function rulesOf(role: RedisRole, prefix: string): string[] {
  const k = keyPatterns(prefix);
  const auditAppend = selector([...AUDIT_APPEND, ...keys(k.audit)]);
  const auditRead = selector([...READ_COMMANDS, ...keys(k.audit, '%R'), ...keys(k.supervisors, '%R')]);
  const control = `&${controlChannel(prefix)}`;
  switch (role) {
    case 'api':
      return [
        ...QUEUE_COMMANDS,
        '+publish',
        ...keys(k.queues),
        control,
        auditRead,
        // The data key, when its store is KMS (envelopes in Redis; opening one takes KMS Decrypt).
        selector([...READ_COMMANDS, ...keys(k.kms, '%R')]),
      ];
    case 'worker':
      return [
        ...QUEUE_COMMANDS,
        '+subscribe',
        '+unsubscribe',
        ...keys(k.queues),
        control,
        auditAppend,
        selector(['+hset', '+hdel', '+hgetall', '+hget', ...keys(k.supervisors), ...keys(k.leases)]),
        selector([...READ_COMMANDS, ...keys(k.kms, '%R')]),
      ];
    case 'scheduler':
      return [
        ...QUEUE_COMMANDS,
        ...keys(k.rotationQueue),
        ...keys(k.rotation),
        ...keys(k.kms),
        auditAppend,
        selector([...READ_COMMANDS, ...keys(k.supervisors, '%R')]),
        // Before a data key version retires: which stored jobs are still sealed under it.
        selector([...READ_COMMANDS, ...keys(k.queues, '%R')]),
      ];
    case 'ops':
      return [...READ_COMMANDS, ...READ_SCRIPTS, `~${prefix}:*`];
    case 'retention':
      return [
        '+xtrim',
        '+xadd',
        '+xrange',
        '+xrevrange',
        '+xlen',
        '+xinfo|stream',
        '+hgetall',
        '+hget',
        '+hset',
        '+multi',
        '+exec',
        '+discard',
        `~${auditStreamKey(prefix)}`,
        `~${auditHeadsKey(prefix)}`,
        `%R~${secretStatsKey(prefix, '*')}`,
      ];
  }
}

export function roleUsername(role: RedisRole, userPrefix = 'fleet-'): string {
  return `${userPrefix}${role}`;
}

/** Environment variable holding a role's password (or `…_FILE`, a file holding it). */
export function rolePasswordEnv(role: RedisRole): string {
  return `FLEET_REDIS_${role.toUpperCase()}_PASSWORD`;
}

export interface RoleCredential {
  username: string;
  password: string;
}

export type RoleCredentials = Partial<Record<RedisRole, RoleCredential>>;

const credentialSchema = z.object({ username: z.string().min(1), password: z.string().min(1) });
/** The embedded Redis's users file (`dataDir/redis/users.json`). */
const embeddedUsersSchema = z.object({
  roles: z.object({
    api: credentialSchema.optional(),
    worker: credentialSchema.optional(),
    scheduler: credentialSchema.optional(),
    ops: credentialSchema.optional(),
    retention: credentialSchema.optional(),
  }),
  admin: credentialSchema,
});

/** Passwords of the embedded Redis's users, generated once (mode 0600). */
export function embeddedUsersFile(dataDir: string): string {
  return path.join(dataDir, 'redis', 'users.json');
}

/** Reads, or on first use generates, the embedded Redis's role passwords and admin password. */
export function ensureEmbeddedUsers(
  dataDir: string,
  userPrefix = 'fleet-',
): { roles: RoleCredentials; admin: RoleCredential } {
  const file = embeddedUsersFile(dataDir);
  if (existsSync(file)) {
    const saved = embeddedUsersSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
    if (saved.success && REDIS_ROLES.every((r) => saved.data.roles[r]) && saved.data.admin.username === 'default')
      return saved.data;
  }
  const gen = (username: string): RoleCredential => ({ username, password: randomBytes(24).toString('hex') });
  const roles: RoleCredentials = Object.fromEntries(REDIS_ROLES.map((r) => [r, gen(roleUsername(r, userPrefix))]));
  const out = { roles, admin: gen('default') };
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`, { mode: 0o600 });
  return out;
}

/** Embedded credentials, if `npm start` generated them in this data dir. */
export function readEmbeddedUsers(dataDir: string): { roles: RoleCredentials; admin: RoleCredential } | null {
  const file = embeddedUsersFile(dataDir);
  if (!existsSync(file)) return null;
  try {
    return embeddedUsersSchema.parse(JSON.parse(readFileSync(file, 'utf8')));
  } catch (err) {
    throw new ConfigError(
      `${file} is not the users file npm start writes (${errorMessage(err)}). Fix: delete it and restart \`npm start\` (new passwords are generated).`,
    );
  }
}

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

/**
 * An ACL file for the embedded Redis: the role users with hashed passwords, and `default` as the
 * admin (all rights, behind a generated password; the fleet itself uses it only to read CONFIG at
 * start-up). `default` is not turned off: Redis replays MULTI/EXEC blocks from the AOF as
 * `default` and re-checks its ACL (redis/redis#14541, fixed upstream by redis/redis#14545; valkey#3983), so a
 * restricted `default` silently drops every transaction at restart (BullMQ's and the audit's).
 */
export function aclFileText(
  prefix: string,
  creds: { roles: RoleCredentials; admin: RoleCredential },
  server?: RedisServerFeatures,
): string {
  const lines = [`user default on #${sha256(creds.admin.password)} ~* &* +@all`];
  for (const role of REDIS_ROLES) {
    const c = creds.roles[role];
    if (c) lines.push(`user ${c.username} on #${sha256(c.password)} ${roleRules(role, prefix, server).join(' ')}`);
  }
  return `${lines.join('\n')}\n`;
}

/** A Redis URL with a role's credentials in place of any the URL carries. Works for cluster URLs. */
export function urlWithCredential(url: string, cred: RoleCredential): string {
  const userinfo = `${encodeURIComponent(cred.username)}:${encodeURIComponent(cred.password)}@`;
  return url.replace(/^([a-z-]+:\/\/)([^@/]*@)?/, `$1${userinfo}`);
}

/** Role credentials from `FLEET_REDIS_<ROLE>_PASSWORD` / `_FILE` (username `fleet-<role>` unless `FLEET_REDIS_<ROLE>_USER`). */
export function roleCredentialsFromEnv(env: NodeJS.ProcessEnv = process.env, userPrefix = 'fleet-'): RoleCredentials {
  const out: RoleCredentials = {};
  for (const role of REDIS_ROLES) {
    const name = rolePasswordEnv(role);
    const file = env[`${name}_FILE`];
    let password = env[name];
    if (file) {
      try {
        password = readFileSync(file, 'utf8').trim();
      } catch (err) {
        throw new ConfigError(
          `${name}_FILE names ${file}, which cannot be read (${errorMessage(err)}). Fix: point it at the file holding the ${role} role's Redis password.`,
        );
      }
    }
    if (password)
      out[role] = {
        username: env[`FLEET_REDIS_${role.toUpperCase()}_USER`] ?? roleUsername(role, userPrefix),
        password,
      };
  }
  return out;
}

/**
 * How each fleet component reaches Redis: its own role's URL when that role's credentials are
 * known (environment, or the embedded Redis's generated users), else the shared URL (one identity
 * for everything: fine on a laptop, refused by `fleet doctor --production`).
 */
export class RedisAccess {
  constructor(
    readonly url: string,
    readonly credentials: RoleCredentials,
    /** An identity allowed to read CONFIG (embedded Redis only), for the start-up settings check. */
    readonly admin: RoleCredential | null = null,
  ) {}

  urlFor(role: RedisRole): string {
    const c = this.credentials[role];
    return c ? urlWithCredential(this.url, c) : this.url;
  }

  hasRole(role: RedisRole): boolean {
    return this.credentials[role] !== undefined;
  }

  /** Roles that fall back to the shared URL. */
  missingRoles(roles: readonly RedisRole[] = REDIS_ROLES): RedisRole[] {
    return roles.filter((r) => !this.hasRole(r));
  }

  adminUrl(): string {
    return this.admin ? urlWithCredential(this.url, this.admin) : this.url;
  }
}

function masters(redis: RedisClient): RedisClient[] {
  return redis instanceof Cluster ? redis.nodes('all') : [redis];
}

/** Redis ≥ 7.0 (ACL selectors and `%R~` key permissions); returns what the server knows. */
export async function assertAclSupport(redis: RedisClient): Promise<RedisServerFeatures> {
  const info = await (masters(redis)[0] ?? redis).info('server');
  const version = /redis_version:([\d.]+)/.exec(info)?.[1] ?? '0';
  if (Number(version.split('.')[0]) < 7) {
    throw new FleetError(
      'INVALID_REQUEST',
      `Redis ${version} has no ACL selectors. Fix: per-role ACL users need Redis ≥ 7.0 (or Valkey ≥ 7.2).`,
      { retryable: false },
    );
  }
  return serverFeatures(version);
}

/**
 * `fleet redis setup`: writes (or updates) the role users on every node, with new passwords unless
 * given. `keepOld` keeps each user's current passwords valid too (password rotation: roll the new
 * one out, then run again with `dropOld`). Saves to the ACL file when the server has one.
 */
export async function setupRoleUsers(
  admin: RedisClient,
  options: {
    prefix: string;
    roles?: readonly RedisRole[];
    passwords?: RoleCredentials;
    userPrefix?: string;
    keepOld?: boolean;
    dropOld?: boolean;
  },
): Promise<{ credentials: RoleCredentials; nodes: number; saved: boolean }> {
  const features = await assertAclSupport(admin);
  const roles = options.roles ?? REDIS_ROLES;
  const plan = roles.map((role): [RedisRole, RoleCredential] => [
    role,
    options.passwords?.[role] ?? {
      username: roleUsername(role, options.userPrefix),
      password: randomBytes(24).toString('hex'),
    },
  ]);
  const credentials: RoleCredentials = Object.fromEntries(plan);
  const nodes = masters(admin);
  let saved = true;
  for (const node of nodes) {
    for (const [role, c] of plan) {
      let passwordRules = ['resetpass', `>${c.password}`];
      if (options.keepOld) passwordRules = [`>${c.password}`];
      if (options.dropOld) {
        const hashes = stringList((await aclGetUser(node, c.username))?.get('passwords'));
        passwordRules = [...hashes.filter((h) => h !== sha256(c.password)).map((h) => `!${h}`), `>${c.password}`];
      }
      await node.call(
        'ACL',
        'SETUSER',
        c.username,
        'on',
        'clearselectors',
        ...passwordRules,
        ...roleRules(role, options.prefix, features),
      );
    }
    try {
      await node.call('ACL', 'SAVE');
    } catch {
      saved = false;
    }
  }
  return { credentials, nodes: nodes.length, saved };
}
