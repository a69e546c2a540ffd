import { readFileSync } from 'node:fs';
import { auditKeyProvider, type FleetConfig } from '../config/resolve.js';
import { parseDuration } from '../config/duration.js';
import { z } from 'zod';
import { FleetError } from '../errors.js';
import { silentLogger } from '../observability/logger.js';
import { connectRedis, ensureReady, type RedisClient } from '../redis/connection.js';
import {
  REDIS_ROLES,
  ROLE_PURPOSE,
  roleRules,
  rolePasswordEnv,
  setupRoleUsers,
  type RedisRole,
  type RoleCredentials,
} from '../redis/acl.js';
import { loadAuditKeys, verifyEntries, type AuditEntry, type VerifyReport } from '../secrets/audit-chain.js';
import { readEntries, verifyAuditTrail } from '../secrets/audit.js';
import { makeProvider } from '../secrets/providers.js';
import type { SecretProvider } from '../secrets/provider.js';

/** `fleet redis setup`: the per-role ACL users, written with the admin identity in REDIS_URL. */
/** One line of the export file: a record's fields, as Redis holds them (strings). */
const exportedRecord = z.record(z.string(), z.string());

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
