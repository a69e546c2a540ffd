/**
 * What a sandbox may send, as a schema: every message from a sandbox (thread or process) is parsed
 * against it before the supervisor acts on it. A sandbox runs code the fleet does not trust, so a
 * message that does not parse is a protocol violation, never a crash (see {@link Sandbox}).
 */
import { z } from 'zod';
import type { FromSandbox } from './protocol.js';

/** Longest secret name a sandbox may ask for (config names are far shorter). */
export const MAX_SECRET_NAME_LENGTH = 256;
/** Longest error name, message and stack the supervisor keeps from a sandbox (longer ones are cut). */
export const MAX_ERROR_TEXT = { name: 200, message: 8 * 1024, stack: 16 * 1024 } as const;

const count = z.number().finite().min(0);
const stats = { cpuMs: count, heapUsedBytes: count, peakHeapBytes: count, secretsZeroed: count };
const record = z.record(z.string(), z.unknown());

const serializedError = z.strictObject({
  name: z.string(),
  // Any string: the supervisor maps codes it does not let a sandbox claim (see Sandbox).
  code: z.string(),
  message: z.string(),
  retryable: z.boolean(),
  stack: z.string().optional(),
  details: record.optional(),
});

export const fromSandboxSchema = z.union([
  z.strictObject({ type: z.literal('ready') }),
  z.strictObject({ type: z.literal('load-failed'), error: serializedError }),
  z.strictObject({ type: z.literal('progress'), value: z.unknown() }),
  z.strictObject({
    type: z.literal('log'),
    level: z.enum(['debug', 'info', 'warn', 'error']),
    msg: z.string(),
    fields: record.optional(),
    source: z.enum(['processor', 'console']),
  }),
  z.strictObject({
    type: z.literal('secret-request'),
    reqId: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    name: z.string().min(1).max(MAX_SECRET_NAME_LENGTH),
  }),
  z.strictObject({
    type: z.literal('done'),
    ok: z.literal(true),
    resultJson: z.string(),
    value: z.custom<Uint8Array>((v) => v instanceof Uint8Array).optional(),
    ...stats,
  }),
  z.strictObject({ type: z.literal('done'), ok: z.literal(false), error: serializedError, ...stats }),
]);

/**
 * Parses one message from a sandbox; returns the first problem as text when it is not one.
 * (The schema's output is the protocol's type but for `error.code`, a string checked later.)
 */
const STATS_KEYS = ['cpuMs', 'heapUsedBytes', 'peakHeapBytes', 'secretsZeroed'] as const;
const DONE_OK_KEYS = new Set(['type', 'ok', 'resultJson', 'value', ...STATS_KEYS]);
const LOG_KEYS = new Set(['type', 'level', 'msg', 'fields', 'source']);
const LEVELS = new Set(['debug', 'info', 'warn', 'error']);
const isCount = (v: unknown): boolean => typeof v === 'number' && Number.isFinite(v) && v >= 0;
const onlyKeys = (o: object, allowed: ReadonlySet<string>): boolean => Object.keys(o).every((k) => allowed.has(k));

/**
 * The two messages of every job (`done` with a result, and `log`), checked by hand: the same rules
 * as the schema, without its copy of each message. Anything else, or anything these do not accept,
 * goes through the schema (which names the problem).
 */
function fastPath(raw: unknown): ParsedFromSandbox | null {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return null;
  const m = raw as Record<string, unknown>; // eslint-disable-line @typescript-eslint/consistent-type-assertions -- an object, checked field by field below
  if (m.type === 'done' && m.ok === true) {
    if (
      typeof m.resultJson === 'string' &&
      STATS_KEYS.every((k) => isCount(m[k])) &&
      (m.value === undefined || m.value instanceof Uint8Array) &&
      onlyKeys(m, DONE_OK_KEYS)
    )
      return m as ParsedFromSandbox; // eslint-disable-line @typescript-eslint/consistent-type-assertions -- every field checked above
    return null;
  }
  if (m.type === 'log') {
    if (
      typeof m.msg === 'string' &&
      typeof m.level === 'string' &&
      LEVELS.has(m.level) &&
      (m.source === 'processor' || m.source === 'console') &&
      m.fields === undefined &&
      onlyKeys(m, LOG_KEYS)
    )
      return m as ParsedFromSandbox; // eslint-disable-line @typescript-eslint/consistent-type-assertions -- every field checked above
    return null;
  }
  return null;
}

export function parseFromSandbox(raw: unknown): { ok: true; msg: ParsedFromSandbox } | { ok: false; problem: string } {
  const fast = fastPath(raw);
  if (fast) return { ok: true, msg: fast };
  // The variant the message names, so the problem is told in its terms (not "no union member").
  const named = typeof raw === 'object' && raw !== null ? Reflect.get(raw, 'type') : undefined;
  const variant = fromSandboxSchema.options.filter((o) => o.shape.type.value === named);
  const schema = variant.length === 1 && variant[0] ? variant[0] : fromSandboxSchema;
  const r = schema.safeParse(raw);
  if (r.success) return { ok: true, msg: r.data };
  const issue = r.error.issues[0];
  const where = issue?.path.length ? ` at ${issue.path.join('.')}` : '';
  const type = typeof raw === 'object' && raw !== null ? Reflect.get(raw, 'type') : undefined;
  return {
    ok: false,
    problem: `a ${typeof type === 'string' ? `"${type.slice(0, 40)}"` : 'malformed'} message that does not match the protocol${where}: ${issue?.message ?? 'invalid'}`,
  };
}

export type ParsedFromSandbox = z.output<typeof fromSandboxSchema>;

// The schema accepts every message the sandbox entry sends (compile-time check).
type Assignable<T extends U, U> = T;
export type ProtocolCovered = Assignable<
  Exclude<FromSandbox, { error: unknown }>,
  Exclude<ParsedFromSandbox, { error: unknown }>
>;
