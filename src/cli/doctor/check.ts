import type { RedisAccess } from '../../redis/acl.js';

/** The outcome of one named check: FAIL is what `fleet doctor` exits 1 for. */
export type CheckStatus = 'PASS' | 'WARN' | 'FAIL';
export interface Check {
  status: CheckStatus;
  check: string;
  detail: string;
  fix?: string;
}

export interface DoctorOptions {
  /** Production rules (no `local` secrets, persistence required). @defaultValue NODE_ENV === 'production' */
  production: boolean;
  /** URLs whose /metrics must answer (API, supervisors). */
  metricsUrls: string[];
  /** A Prometheus to ask whether it scrapes the fleet. */
  prometheusUrl?: string;
  /** Each Redis role's identity, to check that none runs as `default` or with more than its rights. */
  access?: RedisAccess;
}

export const pass = (check: string, detail: string): Check => ({ status: 'PASS', check, detail });
export const warn = (check: string, detail: string, fix: string): Check => ({ status: 'WARN', check, detail, fix });
export const fail = (check: string, detail: string, fix: string): Check => ({ status: 'FAIL', check, detail, fix });
