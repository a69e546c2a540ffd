import { readFileSync } from 'node:fs';
import { auditKeyProvider, type FleetConfig } from '../config/resolve.js';
import { parseDuration } from '../config/duration.js';
import { z } from 'zod';
import { discoverRedisAccess } from '../app.js';
import { FleetError } from '../errors.js';
import { isOneOf } from '../guards.js';
import { silentLogger } from '../observability/logger.js';
import { connectRedis, ensureReady, type RedisClient } from '../redis/connection.js';
import {
  REDIS_ROLES,
  ROLE_PURPOSE,
  roleCredentialsFromEnv,
  roleRules,
  rolePasswordEnv,
  setupRoleUsers,
  type RedisRole,
  type RoleCredentials,
} from '../redis/acl.js';
import { loadAuditKeys, verifyEntries, type AuditEntry, type VerifyReport } from '../secrets/audit-chain.js';
import { readAudit, readEntries, verifyAuditTrail, type AuditRecord } from '../secrets/audit.js';
import { makeProvider } from '../secrets/providers.js';
import type { SecretProvider } from '../secrets/provider.js';
import { withOptionalRedis, withRedis, type CommandContext } from './command.js';

/** One line of the export file: a record's fields, as Redis holds them (strings). */
const exportedRecord = z.record(z.string(), z.string());

/** `fleet redis setup`: the per-role ACL users, written with the admin identity in REDIS_URL. */
export async function redisSetup(
  config: FleetConfig,
  adminUrl: string,
  options: { roles?: RedisRole[]; keepOld?: boolean; dropOld?: boolean; passwords?: RoleCredentials },
): Promise<{ credentials: RoleCredentials; nodes: number; saved: boolean }> {
  const admin = connectRedis(adminUrl, 'producer', { tls: config.redis.tls });
  admin.on('error', () => undefined);
  try {
    await ensureReady(admin);
    return await setupRoleUsers(admin, { prefix: config.redis.prefix, ...options });
  } finally {
    admin.disconnect();
  }
}

export function renderRedisSetup(r: Awaited<ReturnType<typeof redisSetup>>): string {
  const lines = [
    `wrote ${Object.keys(r.credentials).length} ACL users on ${r.nodes} node(s)${r.saved ? ' and saved them to the ACL file' : ' (no aclfile configured: ACL SAVE failed, so they last until the server restarts; configure aclfile, or run this again after each restart)'}`,
  ];
  for (const role of REDIS_ROLES) {
    const c = r.credentials[role];
    if (c)
      lines.push(`# ${role}: ${ROLE_PURPOSE[role]} (user ${c.username})`, `${rolePasswordEnv(role)}=${c.password}`);
  }
  return lines.join('\n');
}

/** The role table of docs/operations.md, from the same rules the setup writes. */
export function roleTable(prefix: string): string {
  return REDIS_ROLES.map((r) => `| \`${r}\` | ${ROLE_PURPOSE[r]} | \`${roleRules(r, prefix).join(' ')}\` |`).join('\n');
}

/** The audit MAC key's provider, with the CLI's identity (VAULT_TOKEN preferred for Vault). */
async function macKeyProvider(config: FleetConfig, redis: RedisClient | undefined): Promise<SecretProvider> {
  const kind = auditKeyProvider(config);
  return makeProvider(kind, config, { ...(redis ? { redis } : {}), logger: silentLogger, preferVaultToken: true });
}

/** `fleet audit init-key`: creates the audit MAC key if it does not exist yet. */
export async function auditInitKey(
  config: FleetConfig,
  redis: RedisClient | undefined,
): Promise<{ secret: string; provider: string; version: string }> {
  const provider = await macKeyProvider(config, redis);
  try {
    const keys = await loadAuditKeys(provider, config.secrets.audit.macKey, { create: true });
    const version = keys.current.version;
    keys.discard();
    return { secret: config.secrets.audit.macKey, provider: provider.kind, version };
  } finally {
    await provider.close();
  }
}

/**
 * `fleet audit verify`: the whole stream from its first record or checkpoint (or, with `since`, a
 * window whose first record per writer is taken as given), or an exported JSON-lines file.
 */
export async function auditVerify(
  config: FleetConfig,
  redis: RedisClient | undefined,
  options: { since?: string; file?: string },
): Promise<VerifyReport> {
  const provider = await macKeyProvider(config, redis);
  try {
    const keys = await loadAuditKeys(provider, config.secrets.audit.macKey, { create: false });
    try {
      if (options.file) {
        const lines = readFileSync(options.file, 'utf8')
          .split('\n')
          .filter((l) => l.trim());
        const entries: AuditEntry[] = lines.map((l, i) => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(l);
          } catch {
            throw new FleetError(
              'INVALID_REQUEST',
              `${options.file} line ${i + 1} is not JSON. Fix: pass the file secrets.audit.export writes.`,
            );
          }
          const fields = exportedRecord.safeParse(parsed);
          if (!fields.success)
            throw new FleetError(
              'INVALID_REQUEST',
              `${options.file} line ${i + 1} is not an audit record (an object of string fields). Fix: pass the file secrets.audit.export writes.`,
            );
          return { fields: fields.data };
        });
        return await verifyEntries(entries, keys, { mode: options.since ? 'anchored' : 'full' });
      }
      if (!redis)
        throw new FleetError(
          'REDIS_UNAVAILABLE',
          'no Redis to verify. Fix: set REDIS_URL, or pass --file <export.jsonl>.',
        );
      return await verifyAuditTrail(
        redis,
        config.redis.prefix,
        keys,
        options.since ? { sinceMs: Date.now() - parseDuration(options.since) } : {},
      );
    } finally {
      keys.discard();
    }
  } finally {
    await provider.close();
  }
}

export function renderVerify(r: VerifyReport): string {
  const head = `${r.records} records from ${r.writers} writer(s)${r.checkpoint ? `, from checkpoint ${r.checkpoint}` : ''}`;
  const denied = Object.entries(r.trimmed?.denied ?? {});
  const trimmed = r.trimmed
    ? `\nretention trimmed ${r.trimmed.records} older records, ${denied.length ? `among them denied: ${denied.map(([a, n]) => `${a} ${n}`).join(', ')}` : 'none of them denied'}`
    : '';
  if (r.ok) return `audit chain OK: ${head}${trimmed}`;
  const b = r.firstBreak;
  return `audit chain BROKEN: ${head}; ${r.breaks} broken link(s)\nfirst at ${b?.at} (writer ${b?.writer}): ${b?.reason}`;
}

/** `fleet audit export`: the stream as JSON lines with the chain fields, for a SIEM to verify on its own. */
export async function auditExport(
  config: FleetConfig,
  redis: RedisClient,
  options: { since?: string },
  write: (line: string) => void,
): Promise<number> {
  const entries = await readEntries(
    redis,
    config.redis.prefix,
    options.since ? `${Date.now() - parseDuration(options.since)}-0` : '-',
  );
  for (const e of entries) write(JSON.stringify(e.fields));
  return entries.length;
}

/** `fleet audit`: the newest records, filtered. */
export async function auditList(
  config: FleetConfig,
  redis: RedisClient,
  opts: { since?: string; secret?: string; denied?: boolean; limit?: number },
): Promise<AuditRecord[]> {
  return readAudit(redis, config.redis.prefix, {
    ...(opts.since ? { sinceMs: Date.now() - parseDuration(opts.since) } : {}),
    ...(opts.secret ? { secret: opts.secret } : {}),
    ...(opts.denied ? { deniedOnly: true } : {}),
    limit: opts.limit ?? 1000,
  });
}

export function renderAudit(rows: AuditRecord[]): string {
  if (!rows.length) return 'no audit records match';
  return rows
    .map(
      (r) =>
        `${new Date(r.ts).toISOString()}  ${r.action.padEnd(14)} ${r.outcome.padEnd(7)} ${r.secret.padEnd(24)} v${r.version ?? '-'}  ${r.provider.padEnd(5)} ${r.action === 'access' ? `${r.jobId}  ` : ''}${r.workerId}  ${r.latencyMs}ms${r.reason ? `  ${r.reason}` : ''}`,
    )
    .join('\n');
}

/** `fleet audit [verify | export | init-key]`; without a subcommand, the newest records. */
export async function auditCommand({ config, opts, args, io, print }: CommandContext): Promise<number> {
  const sub = args[0];
  if (sub === 'verify') {
    const url = discoverRedisAccess(config)?.urlFor('ops');
    const redis =
      url && !opts.file ? connectRedis(url, 'producer', { lazyConnect: true, tls: config.redis.tls }) : undefined;
    redis?.on('error', () => undefined);
    try {
      if (redis) await ensureReady(redis);
      const r = await auditVerify(config, redis, {
        ...(opts.since ? { since: opts.since } : {}),
        ...(opts.file ? { file: opts.file } : {}),
      });
      print(renderVerify(r), {
        ok: r.ok,
        records: r.records,
        writers: r.writers,
        breaks: r.breaks,
        firstBreak: r.firstBreak,
        checkpoint: r.checkpoint,
      });
      return r.ok ? 0 : 1;
    } finally {
      redis?.disconnect();
    }
  }
  if (sub === 'export') {
    const n = await withRedis(config, 'ops', (r) =>
      auditExport(config, r, opts.since ? { since: opts.since } : {}, (line) => io.out(line)),
    );
    io.err(`${n} records exported`);
    return 0;
  }
  if (sub === 'init-key') {
    const r = await withOptionalRedis(config, 'scheduler', (redis) => auditInitKey(config, redis));
    print(`audit MAC key ${r.secret}: version ${r.version} in ${r.provider}`, r);
    return 0;
  }
  if (sub)
    throw new FleetError(
      'INVALID_REQUEST',
      `unknown audit subcommand "${sub}". Use: fleet audit [verify | export | init-key]`,
    );
  const rows = await withRedis(config, 'ops', (r) =>
    auditList(config, r, {
      ...(opts.since ? { since: opts.since } : {}),
      ...(opts.secret ? { secret: opts.secret } : {}),
      denied: opts.denied,
      ...(opts.limit ? { limit: Number(opts.limit) } : {}),
    }),
  );
  print(renderAudit(rows), rows);
  return 0;
}

/** `fleet redis rules`, and `fleet redis setup [--role R]... [--keep-old | --drop-old]` with an admin REDIS_URL. */
export async function redisCommand({ config, opts, args, io, print }: CommandContext): Promise<number> {
  if (args[0] === 'rules') {
    // The exact rules, for managed Redis or your own tooling (passwords are yours to add).
    print(
      REDIS_ROLES.map(
        (r) => `ACL SETUSER fleet-${r} on clearselectors ${roleRules(r, config.redis.prefix).join(' ')}`,
      ).join('\n'),
      Object.fromEntries(REDIS_ROLES.map((r) => [r, roleRules(r, config.redis.prefix)])),
    );
    return 0;
  }
  if (args[0] !== 'setup')
    throw new FleetError(
      'INVALID_REQUEST',
      'usage: fleet redis setup [--role R]... [--keep-old | --drop-old] | fleet redis rules',
    );
  const adminUrl = discoverRedisAccess(config)?.adminUrl() ?? config.redis.url;
  if (!adminUrl)
    throw new FleetError(
      'REDIS_UNAVAILABLE',
      'no Redis to set up. Fix: set REDIS_URL to the server, with an admin user in it (redis://admin:…@host:6379).',
    );
  const roles: RedisRole[] = [];
  for (const r of opts.role === 'all' ? REDIS_ROLES : (opts.role ?? '').split(',')) {
    if (!isOneOf(REDIS_ROLES, r))
      throw new FleetError('INVALID_REQUEST', `--role ${r}: not a Redis role. Roles: ${REDIS_ROLES.join(', ')}`);
    roles.push(r);
  }
  if (opts['keep-old'] && opts['drop-old'])
    throw new FleetError(
      'INVALID_REQUEST',
      '--keep-old and --drop-old exclude each other: the first adds a new password, the second then removes the old ones.',
    );
  // --drop-old keeps the passwords the roles have now (from the environment) and removes every other one.
  const passwords = opts['drop-old'] ? roleCredentialsFromEnv() : undefined;
  if (opts['drop-old'])
    for (const r of roles)
      if (!passwords?.[r])
        throw new FleetError(
          'INVALID_REQUEST',
          `--drop-old keeps the password in ${rolePasswordEnv(r)} and removes the others; it is not set. Fix: export the new password first.`,
        );
  const r = await redisSetup(config, adminUrl, {
    roles,
    keepOld: opts['keep-old'],
    dropOld: opts['drop-old'],
    ...(passwords ? { passwords } : {}),
  });
  io.err(
    'Store each password like any credential: give each role only its own, as FLEET_REDIS_<ROLE>_PASSWORD or _FILE.',
  );
  print(renderRedisSetup(r), { nodes: r.nodes, saved: r.saved, credentials: r.credentials });
  return 0;
}
