/**
 * Secrets injected at egress. A job whose type takes a secret as `inject` gets a placeholder, an
 * opaque per-job token; the value stays in the supervisor, here, and the egress proxy swaps the
 * placeholder for it only in requests that match the secret's binding (host, header shape, body
 * when allowed). At job end the values are zero-filled and the placeholders retired: one seen
 * afterwards is a replay.
 */
import { randomBytes } from 'node:crypto';
import { matchesEgress } from '../config/hosts.js';

export interface Binding {
  hosts: readonly string[];
  header: string;
  format: string;
  body: boolean;
}

/** Every placeholder has this shape, so the proxy can find unknown and stale ones too. */
export const PLACEHOLDER = /fleet-ph-[0-9a-f]{40}/g;

export interface Injection {
  placeholder: string;
  jobId: string;
  jobType: string;
  secret: string;
  value: Uint8Array;
  binding: Binding;
}

export type PlaceholderState =
  | { state: 'active'; injection: Injection }
  | { state: 'retired'; jobId: string; jobType: string; secret: string }
  | { state: 'unknown' };

const RETIRED_KEPT = 50_000;

export class InjectionRegistry {
  readonly #active = new Map<string, Injection>();
  readonly #byJob = new Map<string, string[]>();
  /** Placeholders of ended jobs (newest last), so a replay is named as one. */
  readonly #retired = new Map<string, { jobId: string; jobType: string; secret: string }>();

  /** Takes the value (the registry zero-fills it at job end) and returns the job's placeholder. */
  issue(jobId: string, jobType: string, secret: string, value: Uint8Array, binding: Binding): string {
    const placeholder = `fleet-ph-${randomBytes(20).toString('hex')}`;
    this.#active.set(placeholder, { placeholder, jobId, jobType, secret, value, binding });
    const list = this.#byJob.get(jobId) ?? [];
    list.push(placeholder);
    this.#byJob.set(jobId, list);
    return placeholder;
  }

  lookup(placeholder: string): PlaceholderState {
    const a = this.#active.get(placeholder);
    if (a) return { state: 'active', injection: a };
    const r = this.#retired.get(placeholder);
    return r ? { state: 'retired', ...r } : { state: 'unknown' };
  }

  /** The values a job's requests may carry, for masking responses. */
  valuesOf(jobId: string | null): Injection[] {
    if (!jobId) return [];
    return (this.#byJob.get(jobId) ?? []).flatMap((p) => {
      const a = this.#active.get(p);
      return a ? [a] : [];
    });
  }

  /** Job end: values zero-filled, placeholders retired. Returns how many values were zeroed. */
  endJob(jobId: string): number {
    const list = this.#byJob.get(jobId) ?? [];
    this.#byJob.delete(jobId);
    for (const p of list) {
      const a = this.#active.get(p);
      if (!a) continue;
      a.value.fill(0);
      this.#active.delete(p);
      this.#retired.set(p, { jobId: a.jobId, jobType: a.jobType, secret: a.secret });
    }
    for (const oldest of this.#retired.keys()) {
      if (this.#retired.size <= RETIRED_KEPT) break;
      this.#retired.delete(oldest);
    }
    return list.length;
  }

  get activeCount(): number {
    return this.#active.size;
  }
}

/** Whether a request to `host:port` may carry this secret. */
export function bindingAllows(binding: Binding, host: string, port: number): boolean {
  return binding.hosts.some((h) => matchesEgress(h, host, port));
}
