/** Narrowing helpers for values that arrive untyped (CLI flags, Redis hashes, imported modules). */

/** `value` is one of `list`: a type guard, so a plain string becomes the union it names. */
export const isOneOf = <T extends string>(list: readonly T[], value: unknown): value is T =>
  list.some((x) => x === value);

/** A field an API answer must carry (a KMS key id, a Vault token), or a clear error naming what was missing. */
export function required<T>(value: T | null | undefined, what: string): T {
  if (value === null || value === undefined) throw new Error(`${what} is missing from the answer`);
  return value;
}
