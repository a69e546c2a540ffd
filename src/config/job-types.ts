/**
 * Job types: each as the config declares it, completed with its defaults (sandbox, warm sandboxes,
 * memory limits, paths made absolute, the payload schema as zod and JSON Schema), and the rules a
 * single type must keep.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError, errorMessage } from '../errors.js';
import { patternCovered } from './hosts.js';
import { CRITICAL_MAX_TIMEOUT_MS, type fleetConfigSchema, type jobTypeSchema } from './schema.js';

type ParsedJobType = z.output<typeof jobTypeSchema>;
type SecretItems = z.output<typeof fleetConfigSchema>['secrets']['items'];

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

export type SecretMode = 'deliver' | 'inject';

/**
 * The payload schema of a type that declares none: any JSON value. One instance, so the job runner
 * knows it: what BullMQ read from Redis is `JSON.parse`'s output, which it always accepts.
 */
export const ANY_JSON_PAYLOAD: z.ZodType = z.json();

function toPayloadSchema(name: string, schema: unknown): z.ZodType {
  if (schema === undefined) return ANY_JSON_PAYLOAD;
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
 * One job type with every default filled in. What is wrong with it is added to `problems`, each
 * naming the setting and the fix; `declaredBefore`: another type already has its name.
 */
export function resolveJobType(
  jt0: ParsedJobType,
  context: { items: SecretItems; baseDir: string; declaredBefore: boolean },
  problems: string[],
): JobType {
  const { baseDir } = context;
  const at = `jobTypes.${jt0.name}`;
  const secretModes = new Map<string, SecretMode>();
  for (const s of jt0.secrets) {
    const name = typeof s === 'string' ? s : s.name;
    const binding = context.items[name]?.binding;
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
  if (context.declaredBefore) problems.push(`${at}: declared twice. Fix: give each job type a unique name.`);
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
    payload = ANY_JSON_PAYLOAD;
  }
  const { payloadSchema: _omit, warmSandboxes, recycleHeapUsedMb: _r, sandbox: _s, readPaths: _rp, ...rest } = jt;
  return {
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
  };
}
