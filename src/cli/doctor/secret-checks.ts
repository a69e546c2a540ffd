/**
 * `fleet doctor` on secrets: where they are stored, how they reach jobs, the providers'
 * credentials, rotation and the audit trail.
 */
import type { RedisClient } from '../../redis/connection.js';
import { auditKeyProvider, type FleetConfig } from '../../config/resolve.js';
import { scheduleOf } from '../../config/schedule.js';
import { fieldOf, toError } from '../../errors.js';
import { silentLogger } from '../../observability/logger.js';
import { auditStreamKey } from '../../redis/keys.js';
import { MAX_AGE_MS, secretHealth } from '../../rotation/secret-health.js';
import { PROVIDER_KINDS, type ProviderKind, type SecretMetadata } from '../../secrets/provider.js';
import { makeProvider, providerOfKind } from '../../secrets/providers.js';
import { fail, pass, warn, type Check } from './check.js';

const orList = (kinds: readonly string[]): string => `${kinds.slice(0, -1).join(', ')} or ${kinds.at(-1) ?? ''}`;
/** The providers a production secret may use: every one but the dev-only local store (`"vault", "kms" or …`). */
const EXTERNAL = orList(PROVIDER_KINDS.filter((k) => k !== 'local').map((k) => `"${k}"`));
/** The fleet's own keys (audit MAC key) need a store that keeps versions and can create them: not exec. */
const EXTERNAL_STORE = orList(PROVIDER_KINDS.filter((k) => k !== 'local' && k !== 'exec').map((k) => `"${k}"`));

/** Secrets come from an external manager (the local store is for development). */
export function secretSourceChecks(config: FleetConfig, production: boolean): Check[] {
  const out: Check[] = [];
  for (const [name, kind] of config.secretProviders) {
    if (kind === 'local') {
      out.push(
        production
          ? fail(
              `secret ${name}: external provider`,
              'served by the dev-only local store',
              `set secrets.items.${name}.provider (or secrets.provider) to ${EXTERNAL}`,
            )
          : warn(
              `secret ${name}: external provider`,
              'served by the dev-only local store (fine for development)',
              `use ${EXTERNAL} in production`,
            ),
      );
    } else out.push(pass(`secret ${name}: external provider`, kind));
  }

  const macKind = auditKeyProvider(config);
  const macCheck = `audit MAC key ${config.secrets.audit.macKey}: external provider`;
  if (macKind === 'local')
    out.push(
      (production ? fail : warn)(
        macCheck,
        'in the dev-only local store, whose master key sits beside the data',
        `set secrets.items.${config.secrets.audit.macKey}.provider (or secrets.provider) to ${EXTERNAL_STORE}`,
      ),
    );
  else out.push(pass(macCheck, macKind));
  return out;
}

/** Secrets a type holds in its sandbox although they could be injected at egress. */
export function injectionChecks(config: FleetConfig): Check[] {
  const out: Check[] = [];
  for (const t of config.jobTypes.values()) {
    for (const [name, mode] of t.secretModes) {
      const binding = config.secrets.items[name]?.binding;
      if (mode === 'deliver' && binding)
        out.push(
          warn(
            `job type ${t.name}: secret ${name} mode`,
            `delivered into the sandbox although it has a binding (${binding.hosts.join(', ')}): a compromised processor can read and leak it`,
            `take it as "${name}" (inject, the default with a binding) unless the job needs the value itself`,
          ),
        );
      else if (mode === 'inject')
        out.push(
          pass(
            `job type ${t.name}: secret ${name} mode`,
            `injected at egress toward ${binding?.hosts.join(', ')}; the sandbox holds a placeholder`,
          ),
        );
    }
  }
  return out;
}

/** Audit trail: retention keeps up, and the MAC chain verifies. */
export async function auditChecks(config: FleetConfig, redis: RedisClient): Promise<Check[]> {
  const out: Check[] = [];
  try {
    const length = await redis.xlen(auditStreamKey(config.redis.prefix));
    const max = config.secrets.audit.maxEntries;
    out.push(
      length > max * 2
        ? warn(
            'audit: retention',
            `${length} records, over twice secrets.audit.maxEntries (${max})`,
            'run a scheduler role (it trims behind signed checkpoints with the retention Redis role)',
          )
        : pass('audit: retention', `${length} records (limit ${max})`),
    );
    if (length === 0) throw Object.assign(new Error('no records yet'), { empty: true });
    const { auditVerify } = await import('../trail-commands.js');
    const r = await auditVerify(config, redis, {});
    out.push(
      r.ok
        ? pass('audit: MAC chain', `${r.records} records from ${r.writers} writer(s) verify`)
        : fail(
            'audit: MAC chain',
            `broken at ${r.firstBreak?.at} (writer ${r.firstBreak?.writer}): ${r.firstBreak?.reason}`,
            'someone with Redis access changed the audit stream: compare with the exported copy; find the credential used',
          ),
    );
  } catch (err) {
    if (fieldOf(err, 'empty') === true) out.push(pass('audit: MAC chain', 'no records yet'));
    else
      out.push(
        warn(
          'audit: MAC chain',
          `not verified: ${toError(err).message}`,
          'fleet audit verify with an identity that can read secrets.audit.macKey',
        ),
      );
  }
  return out;
}

/** Providers: credentials valid, Vault policies present, KMS key reachable; returns the stored secrets' metadata. */
export async function providerChecks(
  config: FleetConfig,
  redis: RedisClient,
): Promise<{ checks: Check[]; meta: Map<string, SecretMetadata> }> {
  const out: Check[] = [];
  const meta = new Map<string, SecretMetadata>();
  for (const kind of new Set<ProviderKind>(config.secretProviders.values())) {
    let provider;
    try {
      provider = await makeProvider(kind, config, { redis, logger: silentLogger });
      await provider.check();
      out.push(
        pass(
          `${kind}: credentials`,
          kind === 'vault'
            ? 'supervisor token valid'
            : kind === 'kms'
              ? `key ${config.secrets.kms?.keyId} reachable`
              : kind === 'exec'
                ? `program(s) ${Object.keys(config.secrets.exec ?? {}).join(', ')}: absolute, no symlink, owned by root or this user, writable by no one else (not run)`
                : kind === 'secrets-manager'
                  ? `secrets under "${config.secrets.secretsManager.namePrefix}" listable`
                  : 'master key readable',
        ),
      );
      for (const m of await provider.list().catch(() => [])) meta.set(m.name, m);
      if (kind === 'kms') {
        const on = await providerOfKind(provider, 'kms').keyRotationEnabled();
        out.push(
          on
            ? pass('kms: customer key rotation', 'automatic rotation on')
            : warn(
                'kms: customer key rotation',
                'automatic rotation off',
                'set secrets.kms.enableKeyRotation (the scheduler turns it on) or aws kms enable-key-rotation',
              ),
        );
      }
      if (kind === 'vault') {
        for (const t of config.jobTypes.values()) {
          const names = t.secrets.filter((n) => config.secretProviders.get(n) === 'vault');
          if (!names.length) continue;
          const problem = await providerOfKind(provider, 'vault').probeJobPolicy(t.name, names);
          out.push(
            problem
              ? fail(`vault: policy for ${t.name}`, problem, 'run `fleet vault setup` with an admin token')
              : pass(`vault: policy for ${t.name}`, `job token reads exactly ${names.join(', ')}`),
          );
        }
      }
    } catch (err) {
      out.push(
        fail(
          `${kind}: credentials`,
          toError(err).message,
          kind === 'vault'
            ? 'check VAULT_ADDR and the AppRole (VAULT_ROLE_ID/VAULT_SECRET_ID)'
            : kind === 'kms'
              ? 'check secrets.kms.keyId/region/endpoint and AWS credentials'
              : kind === 'exec'
                ? 'see the fix named for each program under secrets.exec'
                : kind === 'secrets-manager'
                  ? 'check secrets.secretsManager.region/endpoint and AWS credentials (secretsmanager:ListSecrets)'
                  : 'check the master key',
        ),
      );
    } finally {
      await provider?.close();
    }
  }
  return { checks: out, meta };
}

/** Rotation: every secret has a policy within its kind's limit, nothing overdue or failing. */
export async function rotationChecks(
  config: FleetConfig,
  redis: RedisClient,
  meta: ReadonlyMap<string, SecretMetadata>,
): Promise<Check[]> {
  const out: Check[] = [];
  for (const h of await secretHealth(config, redis, meta)) {
    const policy = config.secrets.items[h.secret]?.rotation;
    const limit = MAX_AGE_MS[h.kind];
    if (config.secrets.items[h.secret]?.dynamic) {
      out.push(pass(`secret ${h.secret}: rotation policy`, 'dynamic: minted per job, destroyed at its end'));
      continue;
    }
    if (h.provider === 'exec') {
      // Read-only: fleet neither rotates it nor sees its age.
      out.push(
        warn(
          `secret ${h.secret}: rotation policy`,
          "served by the exec provider: rotated in the program's own store, where fleet cannot see its age",
          `rotate it there ${h.kind === 'encryption-key' ? 'daily' : 'at least weekly'} (1Password, Bitwarden, sops, …)`,
        ),
      );
      continue;
    }
    if (!policy) {
      out.push(
        fail(
          `secret ${h.secret}: rotation policy`,
          'none',
          `add secrets.items.${h.secret}.rotation (${h.kind === 'encryption-key' ? 'daily' : 'weekly or more often'})`,
        ),
      );
      continue;
    }
    const interval = scheduleOf(policy.schedule).intervalMs;
    if (interval === null)
      out.push(
        warn(
          `secret ${h.secret}: rotation policy`,
          `cron "${policy.schedule}": cadence not checked`,
          `make sure it runs at least every ${limit / 86_400_000} day(s)`,
        ),
      );
    else if (interval > limit)
      out.push(
        fail(
          `secret ${h.secret}: rotation policy`,
          `every ${Math.round(interval / 3_600_000)} h, longer than allowed for ${h.kind} (${limit / 3_600_000} h)`,
          `rotate ${h.kind === 'encryption-key' ? 'daily' : 'at least weekly'}`,
        ),
      );
    else out.push(pass(`secret ${h.secret}: rotation policy`, `${policy.schedule} (${policy.rotator.type})`));
    if (h.overdue)
      out.push(
        fail(
          `secret ${h.secret}: rotation due`,
          `overdue since ${new Date(h.nextDueAt ?? 0).toISOString()}`,
          'run a scheduler role, or fleet rotate ' + h.secret,
        ),
      );
    else if (h.rotation.lastOutcome === 'failed')
      out.push(
        fail(
          `secret ${h.secret}: last rotation`,
          `failed at step ${h.rotation.lastFailedStep}: ${h.rotation.lastError}`,
          `fleet audit --secret ${h.secret}; fix the rotator, then fleet rotate ${h.secret} --now`,
        ),
      );
    else
      out.push(
        pass(
          `secret ${h.secret}: rotation due`,
          h.nextDueAt ? `next ${new Date(h.nextDueAt).toISOString()}` : 'scheduled',
        ),
      );
  }
  return out;
}
