import { existsSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { ConfigError, errorMessage, fieldOf } from '../errors.js';
import { scheduleOf } from './schedule.js';
import { patternCovered } from './hosts.js';
import type { ProviderKind } from '../secrets/provider.js';
import { CRITICAL_MAX_TIMEOUT_MS, fleetConfigSchema, type FleetConfigInput, type jobTypeSchema } from './schema.js';

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

export interface FleetConfig extends Omit<ParsedConfig, 'jobTypes'> {
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
  for (const [name, provider] of secretProviders) {
    if (provider === 'vault' && !sec.vault)
      problems.push(
        `secret "${name}" uses provider "vault" but secrets.vault is not configured. Fix: add secrets.vault ({ address, auth }) or pick another provider.`,
      );
    if (provider === 'kms' && !sec.kms)
      problems.push(
        `secret "${name}" uses provider "kms" but secrets.kms is not configured. Fix: add secrets.kms ({ keyId, region, endpoint? }).`,
      );
  }
  for (const [name, item] of Object.entries(sec.items)) {
    const r = item.rotation;
    if (!r) continue;
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

  const hashes = new Set<string>();
  for (const p of cfg.producers) {
    if (hashes.has(p.tokenSha256))
      problems.push(`producers.${p.name}: the same token is given to two producers. Fix: one token per service.`);
    hashes.add(p.tokenSha256);
  }

  if (problems.length) {
    throw new ConfigError(
      `fleet config${options.source ? ` (${options.source})` : ''} is refused:\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    );
  }

  const { jobTypes: _jt, ...top } = cfg;
  const config: FleetConfig = {
    ...top,
    redis: { ...cfg.redis, url: cfg.redis.url ?? process.env.REDIS_URL },
    secrets: {
      ...cfg.secrets,
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

/** The provider holding the audit trail's MAC key (`secrets.audit.macKey`): its own item's, else the default. */
export function auditKeyProvider(config: FleetConfig): ProviderKind {
  return config.secrets.items[config.secrets.audit.macKey]?.provider ?? config.secrets.provider;
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
    `no fleet config found in ${cwd}. Fix: create fleet.config.ts (see README "Configuration") or pass --config <path> / FLEET_CONFIG.`,
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
