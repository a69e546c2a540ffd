import { parseDuration } from './duration.js';

/** A rotation schedule as BullMQ repeat options, plus the interval it promises (for age limits). */
export type Schedule = { every: number; intervalMs: number } | { pattern: string; intervalMs: number | null };

const CRON = /^(\S+\s+){4,5}\S+$/;

/**
 * `daily` → every 24 h, `weekly` → every 7 d, `6h`/`90s`/`2d` → that interval, anything with five
 * or six fields → a cron pattern (BullMQ validates it when the scheduler is created).
 */
export function scheduleOf(schedule: string): Schedule {
  const s = schedule.trim();
  if (s === 'daily') return { every: 86_400_000, intervalMs: 86_400_000 };
  if (s === 'weekly') return { every: 604_800_000, intervalMs: 604_800_000 };
  if (/^\d+[smhdw]$/.test(s)) {
    const ms = parseDuration(s);
    if (ms < 1000) throw new Error('intervals below 1s are not allowed');
    return { every: ms, intervalMs: ms };
  }
  if (CRON.test(s)) {
    // The common fixed-cadence forms, so age limits and overdue checks can use them.
    const fields = s.split(/\s+/);
    const [min = '', hour = '', dom, mon, dow = ''] = fields.length === 6 ? fields.slice(1) : fields;
    let intervalMs: number | null = null;
    if (dom === '*' && mon === '*' && dow === '*' && /^\d+$/.test(min) && /^\d+$/.test(hour)) intervalMs = 86_400_000;
    else if (dom === '*' && mon === '*' && /^\d$/.test(dow) && /^\d+$/.test(min) && /^\d+$/.test(hour))
      intervalMs = 604_800_000;
    return { pattern: s, intervalMs };
  }
  throw new Error(
    `"${schedule}" is not a schedule. Use daily, weekly, an interval (90s, 6h, 2d) or a cron pattern ("0 3 * * *").`,
  );
}
