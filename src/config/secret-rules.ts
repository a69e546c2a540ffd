/**
 * Secrets across the config: which provider serves each secret, and the rules between them: the
 * audit MAC key and the data key kept from jobs and from stores that cannot hold them, exec
 * programs, dynamic credentials and rotation policies.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { z } from 'zod';
import { errorMessage } from '../errors.js';
import type { JobType } from './job-types.js';
import { scheduleOf } from './schedule.js';
import type { fleetConfigSchema, ProviderKind } from './schema.js';

type ParsedSecrets = z.output<typeof fleetConfigSchema>['secrets'];

/**
 * Which provider serves each secret named anywhere in the config. What is wrong is added to
 * `problems`; a module rotator's path is made absolute (from `baseDir`) in place.
 */
export function resolveSecrets(
  sec: ParsedSecrets,
  jobTypes: ReadonlyMap<string, JobType>,
  baseDir: string,
  problems: string[],
): Map<string, ProviderKind> {
  const secretProviders = new Map<string, ProviderKind>();
  for (const t of jobTypes.values()) {
    for (const name of t.secrets) secretProviders.set(name, sec.items[name]?.provider ?? sec.provider);
  }
  for (const [name, item] of Object.entries(sec.items)) secretProviders.set(name, item.provider ?? sec.provider);
  for (const t of jobTypes.values()) {
    if (t.secrets.includes(sec.audit.macKey))
      problems.push(
        `job type "${t.name}" declares "${sec.audit.macKey}", the audit trail's MAC key (secrets.audit.macKey): a job holding it could forge audit records. Fix: remove it from the type's secrets.`,
      );
  }
  const dataKey = sec.dataKey.name;
  const encrypting = [...jobTypes.values()].filter((t) => t.encryptData);
  if (encrypting.length) secretProviders.set(dataKey, sec.items[dataKey]?.provider ?? sec.provider);
  for (const t of jobTypes.values()) {
    if (t.secrets.includes(dataKey))
      problems.push(
        `job type "${t.name}" declares "${dataKey}", the key sealing job data at rest (secrets.dataKey.name): a job holding it could open every sealed job. Fix: remove it from the type's secrets.`,
      );
  }
  if (dataKey === sec.audit.macKey)
    problems.push(
      `secrets.dataKey.name and secrets.audit.macKey are both "${dataKey}". Fix: give the data key a name of its own.`,
    );
  const dataKeyRotation = sec.items[dataKey]?.rotation;
  if (dataKeyRotation) {
    const r = dataKeyRotation.rotator;
    if (r.type === 'redis-acl')
      problems.push(
        `secrets.items.${dataKey}.rotation.rotator is "redis-acl", but "${dataKey}" is the data key. Fix: use { type: "random", bytes: 32 }.`,
      );
    if (r.type === 'random' && r.bytes < 32)
      problems.push(
        `secrets.items.${dataKey}.rotation.rotator.bytes is ${r.bytes}; the data key needs at least 32. Fix: set bytes: 32.`,
      );
    if (dataKeyRotation.graceSeconds < 2 * sec.dataKey.refreshSeconds)
      problems.push(
        `secrets.items.${dataKey}.rotation.graceSeconds (${dataKeyRotation.graceSeconds}) is below twice secrets.dataKey.refreshSeconds (${sec.dataKey.refreshSeconds}): a producer could still seal under a version being retired. Fix: raise graceSeconds to ≥ ${2 * sec.dataKey.refreshSeconds}.`,
      );
  }
  for (const [name, provider] of secretProviders) {
    if (provider === 'vault' && !sec.vault)
      problems.push(
        `secret "${name}" uses provider "vault" but secrets.vault is not configured. Fix: add secrets.vault ({ address, auth }) or pick another provider.`,
      );
    if (provider === 'kms' && !sec.kms)
      problems.push(
        `secret "${name}" uses provider "kms" but secrets.kms is not configured. Fix: add secrets.kms ({ keyId, region, endpoint? }).`,
      );
    if (provider === 'exec') {
      const ref = execRef(sec, name);
      if ('problem' in ref) problems.push(ref.problem);
    } else if (sec.items[name]?.exec)
      problems.push(
        `secrets.items.${name}.exec is set but the secret's provider is "${provider}". Fix: set secrets.items.${name}.provider to "exec", or remove exec.`,
      );
  }
  if ((sec.items[sec.audit.macKey]?.provider ?? sec.provider) === 'exec')
    problems.push(
      `the audit MAC key "${sec.audit.macKey}" (secrets.audit.macKey) would come from the exec provider, which has no versions (the trail is verified by key version) and cannot create it. Fix: set secrets.items.${sec.audit.macKey}.provider to "vault", "kms" or "local".`,
    );
  if (encrypting.length && (sec.items[dataKey]?.provider ?? sec.provider) === 'exec')
    problems.push(
      `the data key "${dataKey}" (secrets.dataKey.name) would come from the exec provider, which cannot create or rotate it. Fix: set secrets.items.${dataKey}.provider to "vault", "kms" or "local".`,
    );
  for (const [program, p] of Object.entries(sec.exec ?? {})) {
    if (p.jsonOnly) continue;
    const ids = new Set(
      [...secretProviders]
        .filter(([, kind]) => kind === 'exec')
        .map(([name]) => execRef(sec, name))
        .flatMap((r) => ('program' in r && r.program === program ? [r.id] : [])),
    );
    if (ids.size > 1)
      problems.push(
        `secrets.exec.${program} has jsonOnly: false but answers for ${ids.size} ids (${[...ids].join(', ')}); a bare value can only answer one. Fix: give each its own program, or set jsonOnly: true and answer in JSON.`,
      );
  }
  for (const [name, item] of Object.entries(sec.items)) {
    if (item.dynamic && secretProviders.get(name) !== 'vault')
      problems.push(
        `secrets.items.${name}.dynamic needs provider "vault" (a dynamic credential is minted by Vault's secrets engines). Fix: set provider: "vault" or remove dynamic.`,
      );
    if (item.dynamic && item.rotation)
      problems.push(
        `secrets.items.${name} is dynamic and has a rotation policy: a dynamic credential is minted fresh for every job and destroyed at its end, so there is nothing to rotate. Fix: remove rotation.`,
      );
    if (item.dynamic && name === sec.audit.macKey)
      problems.push(`secrets.items.${name} is the audit MAC key and may not be dynamic. Fix: keep it a stored secret.`);
    const r = item.rotation;
    if (!r) continue;
    if (secretProviders.get(name) === 'exec')
      problems.push(
        `secrets.items.${name}.rotation: the secret comes from the exec provider, which is read-only. Fix: remove the rotation and rotate it in the program's own store (1Password, Bitwarden, sops, …).`,
      );
    try {
      scheduleOf(r.schedule);
    } catch (err) {
      problems.push(`secrets.items.${name}.rotation.schedule: ${errorMessage(err)}`);
    }
    if (r.rotator.type === 'kms-rewrap' && secretProviders.get(name) !== 'kms')
      problems.push(
        `secrets.items.${name}.rotation.rotator "kms-rewrap" needs provider "kms". Fix: set provider: "kms" or use another rotator.`,
      );
    if (r.rotator.type === 'module') {
      const abs = path.resolve(baseDir, r.rotator.path);
      if (!existsSync(abs)) problems.push(`secrets.items.${name}.rotation.rotator.path: ${abs} does not exist.`);
      else r.rotator.path = abs;
    }
  }
  if (sec.vault && !(sec.vault.address ?? process.env.VAULT_ADDR))
    problems.push('secrets.vault.address is not set and VAULT_ADDR is empty. Fix: set one of them.');
  return secretProviders;
}

/**
 * Which `exec` program answers for secret `name`, and the id it is asked by: the item's
 * `exec.program` (else the only program configured) and `exec.id` (else the name), or what is wrong.
 */
export function execRef(
  secrets: Pick<ParsedSecrets, 'exec' | 'items'>,
  name: string,
): { program: string; id: string } | { problem: string } {
  const programs = Object.keys(secrets.exec ?? {});
  const wanted = secrets.items[name]?.exec;
  const id = wanted?.id ?? name;
  if (!programs.length)
    return {
      problem: `secret "${name}" uses provider "exec" but secrets.exec names no program. Fix: add secrets.exec.<name> ({ command: "/absolute/path", passEnv: [...] }).`,
    };
  if (wanted?.program !== undefined) {
    if (!programs.includes(wanted.program))
      return {
        problem: `secrets.items.${name}.exec.program is "${wanted.program}", which secrets.exec does not configure (it has ${programs.join(', ')}). Fix: correct the name or add the program.`,
      };
    return { program: wanted.program, id };
  }
  const [only] = programs;
  if (programs.length > 1 || only === undefined)
    return {
      problem: `secret "${name}" uses provider "exec" and secrets.exec has several programs (${programs.join(', ')}). Fix: set secrets.items.${name}.exec.program.`,
    };
  return { program: only, id };
}
