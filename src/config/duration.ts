import { FleetError } from '../errors.js';

const UNIT_MS = new Map([
  ['s', 1000],
  ['m', 60_000],
  ['h', 3_600_000],
  ['d', 86_400_000],
  ['w', 604_800_000],
]);

/** `90s`, `30m`, `24h`, `7d`, `2w` → milliseconds; anything else is a clear error. */
export function parseDuration(s: string): number {
  const [, count, unit] = /^(\d+)(s|m|h|d|w)$/.exec(s.trim()) ?? [];
  const unitMs = UNIT_MS.get(unit ?? '');
  if (unitMs === undefined)
    throw new FleetError('INVALID_REQUEST', `"${s}" is not a duration. Use e.g. 90s, 30m, 24h, 7d, 2w.`);
  return Number(count) * unitMs;
}
