import { existsSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { ConfigError, errorMessage, fieldOf } from '../errors.js';
import { redisUrlProblem } from './redis-url.js';
import { scheduleOf } from './schedule.js';
import { patternCovered } from './hosts.js';
import {
  API_TLS,
  hasTlsFiles,
  isRedisTlsUrl,
  REDIS_TLS,
  resolveTlsFiles,
  settingName,
  tlsFileProblems,
  VAULT_TLS,
} from './tls.js';
import type { TlsFiles, TlsSettingNames } from './tls.js';
import {
  CRITICAL_MAX_TIMEOUT_MS,
  FLEET_PRODUCER_NAMES,
  fleetConfigSchema,
  type FleetConfigInput,
  type jobTypeSchema,
  type ProviderKind,
} from './schema.js';

type ParsedJobType = z.output<typeof jobTypeSchema>;
type ParsedConfig = z.output<typeof fleetConfigSchema>;

/** A job type with every default filled in and its processor path made absolute. */
export interface JobType extends Omit<
  ParsedJobType,
  'payloadSchema' | 'warmSandboxes' | 'recycleHeapUsedMb' | 'sandbox' | 'secrets' | 'memoryLimitMb' | 'maxFileSizeMb'
> {
  memoryLimitMb: number;
  maxFileSizeMb: number;
  /** Names of the secrets this type may use. */
  secrets: string[];
  /** How each of them reaches the job: handed to the sandbox, or injected at egress. */
  secretModes: ReadonlyMap<string, SecretMode>;
  processorPath: string;
  /** `process` for types with secrets or `critical` ones unless set otherwise. */
  sandbox: 'process' | 'thread';
  payload: z.ZodType;
  /** The payload schema as JSON Schema (draft 2020-12), for callers outside TypeScript. */
  payloadJsonSchema: Record<string, unknown>;
  warmSandboxes: number;
  recycleHeapUsedMb: number;
}

type ParsedVault = NonNullable<ParsedConfig['secrets']['vault']>;

export interface FleetConfig extends Omit<ParsedConfig, 'jobTypes' | 'redis' | 'api' | 'secrets'> {
  /** `tls`: files as absolute paths, each from the config or else its environment variable. */
  redis: Omit<ParsedConfig['redis'], 'tls'> & { tls: TlsFiles };
  api: Omit<ParsedConfig['api'], 'tls'> & { tls: Pick<TlsFiles, 'certFile' | 'keyFile'> };
  secrets: Omit<ParsedConfig['secrets'], 'vault'> & { vault?: Omit<ParsedVault, 'tls'> & { tls: TlsFiles } };
  /** Which provider serves each secret named anywhere in the config. */
  secretProviders: ReadonlyMap<string, ProviderKind>;
  /** Absolute path of the file this came from, or `null` when built in code. */
  source: string | null;
  dataDir: string;
  jobTypes: ReadonlyMap<string, JobType>;
}

export type SecretMode = 'deliver' | 'inject';

/** Identity helper giving config files type checking and editor help. */
export function defineConfig(config: FleetConfigInput): FleetConfigInput {
  return config;
}

const CONFIG_FILES = ['fleet.config.ts', 'fleet.config.js', 'fleet.config.mjs', 'fleet.config.json'];

function formatZodIssues(error: z.ZodError): string {
  return error.issues.map((i) => `  - ${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('\n');
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value) && !(value instanceof z.ZodType)) {
    Object.freeze(value);
    for (const v of value instanceof Map ? value.values() : Object.values(value)) deepFreeze(v);
  }
  return value;
}

function toPayloadSchema(name: string, schema: unknown): z.ZodType {
  if (schema === undefined) return z.json();
  if (schema instanceof z.ZodType) return schema;
  try {
    // zod checks the schema itself and throws a readable error (caught below) for anything else.
    // eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- see the line above
    return z.fromJSONSchema(schema as Parameters<typeof z.fromJSONSchema>[0]);
  } catch (err) {
    throw new ConfigError(
      `jobTypes.${name}.payloadSchema is not a JSON Schema zod can read: ${errorMessage(err)}. ` +
        'Fix: give a JSON Schema object (draft 2020-12) or, in a .ts/.js config, a zod schema.',
      { cause: err },
    );
  }
}

function toJsonSchema(name: string, schema: z.ZodType): Record<string, unknown> {
  try {
    return z.toJSONSchema(schema, { unrepresentable: 'any' });
  } catch (err) {
    throw new ConfigError(`jobTypes.${name}.payloadSchema cannot be exported as JSON Schema: ${errorMessage(err)}`, {
      cause: err,
    });
  }
}

/**
 * Validates and completes a configuration. Throws {@link ConfigError} naming each bad setting and
 * how to fix it; refuses contradictory or unsafe combinations (see the checks below).
 */
export function resolveConfig(input: unknown, options: { baseDir?: string; source?: string | null } = {}): FleetConfig {
  const parsed = fleetConfigSchema.safeParse(input);
  if (!parsed.success) {
    throw new ConfigError(
      `fleet config${options.source ? ` (${options.source})` : ''} is invalid:\n${formatZodIssues(parsed.error)}`,
    );
  }
  const cfg = parsed.data;
  const baseDir = options.baseDir ?? process.cwd();
  const problems: string[] = [];
  const jobTypes = new Map<string, JobType>();

  for (const jt0 of cfg.jobTypes) {
    const at = `jobTypes.${jt0.name}`;
    const secretModes = new Map<string, SecretMode>();
    for (const s of jt0.secrets) {
      const name = typeof s === 'string' ? s : s.name;
      const binding = cfg.secrets.items[name]?.binding;
      const mode: SecretMode = typeof s === 'string' ? (binding ? 'inject' : 'deliver') : s.mode;
      if (mode === 'inject' && !binding)
        problems.push(
          `${at}.secrets: "${name}" is to be injected but has no binding. Fix: add secrets.items.${name}.binding { hosts: [...] }, or take it as { name: "${name}", mode: "deliver" }.`,
        );
      if (mode === 'inject' && binding && jt0.egress !== 'any') {
        for (const h of binding.hosts)
          if (!patternCovered(h, jt0.egress === 'none' ? [] : jt0.egress))
            problems.push(
              `${at}.egress does not allow ${h}, where its injected secret "${name}" is bound. Fix: add "${h}" to the type's egress.`,
            );
      }
      secretModes.set(name, mode);
    }
    const jt = { ...jt0, secrets: jt0.secrets.map((s) => (typeof s === 'string' ? s : s.name)) };
    if (jobTypes.has(jt.name)) problems.push(`${at}: declared twice. Fix: give each job type a unique name.`);
    if (jt.sensitivity === 'critical') {
      if (jt.isolation !== 'job')
        problems.push(
          `${at}.isolation is "${jt.isolation}" but the type is critical. Fix: set isolation: "job" (a fresh sandbox per job) or sensitivity: "routine".`,
        );
      if (jt.timeoutMs > CRITICAL_MAX_TIMEOUT_MS)
        problems.push(
          `${at}.timeoutMs is ${jt.timeoutMs} but critical work must end within ${CRITICAL_MAX_TIMEOUT_MS} ms. Fix: lower timeoutMs to ≤ ${CRITICAL_MAX_TIMEOUT_MS}.`,
        );
    }
    if (jt.abortGraceMs >= jt.timeoutMs)
      problems.push(
        `${at}.abortGraceMs (${jt.abortGraceMs}) must be below timeoutMs (${jt.timeoutMs}). Fix: lower abortGraceMs.`,
      );
    if (jt.globalConcurrency !== undefined && jt.globalConcurrency < 1)
      problems.push(`${at}.globalConcurrency must be ≥ 1.`);
    const recycle = jt.recycleHeapUsedMb ?? jt.maxOldGenerationSizeMb * 0.75;
    if (recycle > jt.maxOldGenerationSizeMb)
      problems.push(
        `${at}.recycleHeapUsedMb (${recycle}) exceeds maxOldGenerationSizeMb (${jt.maxOldGenerationSizeMb}). Fix: lower it.`,
      );
    if (new Set(jt.secrets).size !== jt.secrets.length) problems.push(`${at}.secrets lists a name twice.`);
    const memoryLimitMb = jt.memoryLimitMb ?? Math.max(256, 2 * jt.maxOldGenerationSizeMb + 128);
    // Node itself takes some 50 MB beside its heap: a cap below heap + 64 MB kills sandboxes whose
    // heap is still within its own limit.
    if (memoryLimitMb < jt.maxOldGenerationSizeMb + 64)
      problems.push(
        `${at}.memoryLimitMb (${memoryLimitMb}) leaves no room beside the heap limit (maxOldGenerationSizeMb ${jt.maxOldGenerationSizeMb}). Fix: set memoryLimitMb ≥ ${jt.maxOldGenerationSizeMb + 64}, or lower maxOldGenerationSizeMb.`,
      );

    const sandbox = jt.sandbox ?? (jt.secrets.length > 0 || jt.sensitivity === 'critical' ? 'process' : 'thread');
    if (sandbox === 'thread' && jt.secrets.length > 0)
      problems.push(
        `${at}.sandbox is "thread" but the type declares secrets; a thread shares the supervisor's process and credentials. Fix: remove sandbox (process sandboxes are the default) or the secrets.`,
      );
    if (sandbox === 'thread' && jt.sensitivity === 'critical')
      problems.push(
        `${at}.sandbox is "thread" but the type is critical. Fix: remove sandbox: "thread" (critical types run in process sandboxes).`,
      );
    if (sandbox === 'thread' && jt.egress !== 'none')
      problems.push(
        `${at}.egress is only enforced for process sandboxes, and sandbox is "thread". Fix: set sandbox: "process".`,
      );
    const readPaths = jt.readPaths.map((p) => path.resolve(baseDir, p));
    for (const p of readPaths) if (!existsSync(p)) problems.push(`${at}.readPaths: ${p} does not exist.`);
    const processorPath = path.resolve(baseDir, jt.processor);
    if (!existsSync(processorPath))
      problems.push(`${at}.processor: ${processorPath} does not exist. Fix: give a path relative to the config file.`);

    let payload: z.ZodType;
    let payloadJsonSchema: Record<string, unknown> = {};
    try {
      payload = toPayloadSchema(jt.name, jt.payloadSchema);
      payloadJsonSchema = toJsonSchema(jt.name, payload);
    } catch (err) {
      problems.push(errorMessage(err));
      payload = z.json();
    }
    const { payloadSchema: _omit, warmSandboxes, recycleHeapUsedMb: _r, sandbox: _s, readPaths: _rp, ...rest } = jt;
    jobTypes.set(jt.name, {
      ...rest,
      sandbox,
      readPaths,
      secretModes,
      processorPath,
      payload,
      payloadJsonSchema,
      warmSandboxes: warmSandboxes ?? (jt.isolation === 'job' ? jt.concurrency : 1),
      recycleHeapUsedMb: recycle,
      memoryLimitMb,
      maxFileSizeMb: jt.maxFileSizeMb ?? jt.tmpSizeMb,
    });
  }

  for (const p of cfg.producers) {
    for (const t of p.jobTypes) {
      if (t !== '*' && !jobTypes.has(t))
        problems.push(
          `producers.${p.name}.jobTypes names "${t}", which is not a declared job type. Fix: declare it or remove it.`,
        );
    }
  }
  const sec = cfg.secrets;
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
  if (auditKeyProvider({ secrets: sec }) === 'exec')
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

  // TLS: files that exist, a certificate with its key, and no TLS settings beside a plain URL
  // (the operator would believe the traffic encrypted).
  const redisUrl = cfg.redis.url ?? process.env.REDIS_URL;
  const redisUrlRefusal = redisUrl === undefined ? null : redisUrlProblem(redisUrl);
  if (redisUrlRefusal)
    problems.push(`redis.url (or REDIS_URL) ${redisUrlRefusal.reason}. Fix: ${redisUrlRefusal.fix}.`);
  const redisTls = resolveTlsFiles(cfg.redis.tls, REDIS_TLS, baseDir);
  problems.push(...tlsPathProblems(redisTls, REDIS_TLS));
  if (hasTlsFiles(redisTls) && !(redisUrl && isRedisTlsUrl(redisUrl)))
    problems.push(
      redisUrl
        ? `redis.tls (or REDIS_TLS_*) is set but the Redis URL is not rediss:// or rediss-cluster://: the connection would be plain TCP. Fix: use the rediss:// form of the URL, or remove the TLS settings.`
        : 'redis.tls (or REDIS_TLS_*) is set but no Redis URL is: the private redis-server `npm start` runs speaks plain TCP on loopback. Fix: set REDIS_URL to your rediss:// server, or remove the TLS settings.',
    );
  const vaultTls = sec.vault ? resolveTlsFiles(sec.vault.tls, VAULT_TLS, baseDir) : {};
  problems.push(...tlsPathProblems(vaultTls, VAULT_TLS));
  const vaultAddress = sec.vault?.address ?? process.env.VAULT_ADDR;
  if (hasTlsFiles(vaultTls) && vaultAddress && !vaultAddress.startsWith('https://'))
    problems.push(
      'secrets.vault.tls (or VAULT_CACERT / VAULT_CLIENT_CERT) is set but the Vault address is not https://: the connection would be plain HTTP. Fix: use the https:// address of Vault, or remove the TLS settings.',
    );
  const apiTls = resolveTlsFiles(cfg.api.tls, API_TLS, baseDir);
  problems.push(...tlsPathProblems(apiTls, API_TLS));

  problems.push(...producerProblems(cfg.producers));

  if (problems.length) {
    throw new ConfigError(
      `fleet config${options.source ? ` (${options.source})` : ''} is refused:\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    );
  }

  const { jobTypes: _jt, ...top } = cfg;
  const { vault: _v, ...secretsWithoutVault } = cfg.secrets;
  const config: FleetConfig = {
    ...top,
    redis: { ...cfg.redis, url: redisUrl, tls: redisTls },
    api: { ...cfg.api, tls: apiTls },
    secrets: {
      ...secretsWithoutVault,
      ...(sec.vault ? { vault: { ...sec.vault, tls: vaultTls } } : {}),
      audit: {
        ...cfg.secrets.audit,
        ...(cfg.secrets.audit.export && cfg.secrets.audit.export !== '-'
          ? { export: path.resolve(baseDir, cfg.secrets.audit.export) }
          : {}),
      },
    },
    dataDir: path.resolve(baseDir, cfg.dataDir),
    source: options.source ?? null,
    secretProviders,
    jobTypes,
  };
  return deepFreeze(config);
}

/**
 * Which `exec` program answers for secret `name`, and the id it is asked by: the item's
 * `exec.program` (else the only program configured) and `exec.id` (else the name), or what is wrong.
 */
export function execRef(
  secrets: Pick<ParsedConfig['secrets'], 'exec' | 'items'>,
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

/** A certificate without its key, and files that do not exist. */
function tlsPathProblems(files: TlsFiles, names: TlsSettingNames): string[] {
  const out = tlsFileProblems(files, names);
  for (const key of ['caFile', 'certFile', 'keyFile'] as const) {
    const file = files[key];
    if (file && !existsSync(file))
      out.push(`${settingName(names, key)}: ${file} does not exist. Fix: give the path of the PEM file.`);
  }
  return out;
}

/** The provider holding the audit trail's MAC key (`secrets.audit.macKey`): its own item's, else the default. */
/** Who owns a job is its producer's name: one per service, and none the fleet's own producers use. */
function producerProblems(producers: readonly ParsedConfig['producers'][number][]): string[] {
  const out: string[] = [];
  const reserved = new Map<string, string>(Object.entries(FLEET_PRODUCER_NAMES).map(([k, v]) => [v, k]));
  const names = new Set<string>();
  const hashes = new Set<string>();
  for (const p of producers) {
    if (reserved.has(p.name))
      out.push(
        `producers.${p.name}: "${p.name}" is the owner name the fleet's own producers record (reserved: ${[...reserved.keys()].join(', ')}); an HTTP producer with it would read the jobs they enqueue, sealed data in plaintext. Fix: give this producer another name.`,
      );
    if (names.has(p.name))
      out.push(
        `producers.${p.name}: two producers have this name, and a job's owner is its producer's name: each would read and cancel the other's jobs, sealed data in plaintext. Fix: one name per service; to rotate a token, list the old and new hashes in one producer's tokenSha256 (an array).`,
      );
    names.add(p.name);
    for (const hash of typeof p.tokenSha256 === 'string' ? [p.tokenSha256] : p.tokenSha256) {
      if (hashes.has(hash))
        out.push(`producers.${p.name}: the same token is given to two producers. Fix: one token per service.`);
      hashes.add(hash);
    }
  }
  return out;
}

export function auditKeyProvider(config: {
  secrets: Pick<FleetConfig['secrets'], 'items' | 'audit' | 'provider'>;
}): ProviderKind {
  return config.secrets.items[config.secrets.audit.macKey]?.provider ?? config.secrets.provider;
}

/** The provider holding the data key of job data at rest (`secrets.dataKey.name`): its own item's, else the default. */
export function dataKeyProvider(config: FleetConfig): ProviderKind {
  return config.secrets.items[config.secrets.dataKey.name]?.provider ?? config.secrets.provider;
}

/** Whether any job type seals its data at rest. */
export function encryptsData(config: FleetConfig): boolean {
  return [...config.jobTypes.values()].some((t) => t.encryptData);
}

/** Finds the config file: explicit path > `FLEET_CONFIG` > `fleet.config.{ts,js,mjs,json}` in `cwd`. */
export function findConfigFile(explicit?: string, cwd = process.cwd()): string {
  const chosen = explicit ?? process.env.FLEET_CONFIG;
  if (chosen) {
    const abs = path.resolve(cwd, chosen);
    if (!existsSync(abs))
      throw new ConfigError(
        `config file ${abs} does not exist (from ${explicit ? '--config' : 'FLEET_CONFIG'}). Fix: point it at your fleet.config.ts/.js/.json.`,
      );
    return abs;
  }
  for (const f of CONFIG_FILES) {
    const abs = path.join(cwd, f);
    if (existsSync(abs)) return abs;
  }
  throw new ConfigError(
    `no fleet config found in ${cwd}. Fix: create fleet.config.ts (see docs/configuration.md) or pass --config <path> / FLEET_CONFIG.`,
  );
}

/** Loads, validates and freezes the config file. `.ts` files are loaded through tsx. */
export async function loadConfig(options: { path?: string; cwd?: string } = {}): Promise<FleetConfig> {
  const file = findConfigFile(options.path, options.cwd);
  let raw: unknown;
  try {
    if (file.endsWith('.json')) {
      const { readFile } = await import('node:fs/promises');
      raw = JSON.parse(await readFile(file, 'utf8'));
    } else if (file.endsWith('.ts')) {
      const { tsImport } = await import('tsx/esm/api');
      raw = fieldOf(await tsImport(pathToFileURL(file).href, import.meta.url), 'default');
    } else {
      raw = fieldOf(await import(pathToFileURL(file).href), 'default');
    }
  } catch (err) {
    throw new ConfigError(`could not read config file ${file}: ${errorMessage(err)}`, { cause: err });
  }
  if (raw === undefined)
    throw new ConfigError(`config file ${file} has no default export. Fix: export default defineConfig({...}).`);
  return resolveConfig(raw, { baseDir: path.dirname(file), source: file });
}
