import { SecretUnavailableError, toError } from '../errors.js';
import { SecretMask } from './secret-mask.js';
import { checkProgram, ExecProgramError, runProgram, type ExecProgram } from './exec-program.js';
import { ExecResponseError, parseExecAnswer } from './exec-response.js';
import { declaredLease } from './lease.js';
import type { LeaseRequest, SecretLease, SecretMetadata, SecretProvider, SecretValue } from './provider.js';

/**
 * The version every exec value is reported under. The protocol carries no versions, and one
 * derived from the value (a hash) would let anyone who reads the audit trail test guesses of a
 * low-entropy secret; so it is a constant, and fleet cannot tell two values of one secret apart.
 */
export const EXEC_VERSION = 'current';

/** Characters of a program's own message (per-id error, stderr) kept in an error. */
const MAX_PROGRAM_MESSAGE = 300;

export interface ExecProviderOptions {
  /** The configured programs, by name (`secrets.exec.<name>`). */
  programs: ReadonlyMap<string, ExecProgram>;
  /** Each secret this provider serves: the program that answers for it and the id it is asked by. */
  secrets: ReadonlyMap<string, { program: string; id: string }>;
  /** Where `passEnv` variables are read. @defaultValue process.env */
  env?: Readonly<Record<string, string | undefined>>;
}

type Outcome = { value: Uint8Array } | { error: SecretUnavailableError };

/** A program's own text, made safe to carry in an error: secrets masked, control characters gone, cut short. */
function programText(text: string, mask: SecretMask, keep: 'head' | 'tail'): string {
  const flat = mask
    .text(text)
    .replace(/[\u0000-\u001f\u007f]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  if (flat.length <= MAX_PROGRAM_MESSAGE) return flat;
  return keep === 'head' ? `${flat.slice(0, MAX_PROGRAM_MESSAGE)}…` : `…${flat.slice(-MAX_PROGRAM_MESSAGE)}`;
}

const readOnly = (name: string): Promise<never> =>
  Promise.reject(
    new SecretUnavailableError(
      'SECRET_PERMISSION_DENIED',
      `the exec provider is read-only: set the value of secret "${name}" in the program's own store (1Password, Bitwarden, sops, pass, …); fleet reads it at the next job start.`,
    ),
  );

/**
 * Secrets from an external program, in OpenClaw's exec provider protocol: the program is run
 * (no shell, only the listed environment, in a process group of its own) with
 * `{"protocolVersion":1,"provider":…,"ids":[…]}` on stdin and answers
 * `{"protocolVersion":1,"values":{…},"errors":{…}}` on stdout. One run per program per job start
 * for all the job's secrets it serves; the values are held as bytes and zero-filled at job end.
 * Read-only: values are set and rotated in the program's own store.
 */
export class ExecProvider implements SecretProvider {
  readonly kind = 'exec' as const;
  readonly #o: ExecProviderOptions;
  /** Values held by leases not yet released: masked in any program text an error carries. */
  readonly #live = new Set<Uint8Array>();

  constructor(options: ExecProviderOptions) {
    this.#o = options;
  }

  #env(p: ExecProgram): Record<string, string> {
    const from = this.#o.env ?? process.env;
    const env: Record<string, string> = {};
    for (const k of p.passEnv) {
      const v = from[k];
      if (v !== undefined) env[k] = v;
    }
    return Object.assign(env, p.env);
  }

  #mask(values: Iterable<Uint8Array>): SecretMask {
    const m = new SecretMask();
    for (const v of [...values, ...this.#live]) m.add(v);
    return m;
  }

  /** Runs one program for `ids`; every id gets its value or the reason it has none. */
  async #ask(p: ExecProgram, ids: string[], names: (id: string) => string): Promise<Map<string, Outcome>> {
    const at = `exec program "${p.name}" (${p.command})`;
    const out = new Map<string, Outcome>();
    const all = (error: SecretUnavailableError): Map<string, Outcome> => {
      for (const id of ids) out.set(id, { error });
      return out;
    };
    let run;
    try {
      const file = await checkProgram(p);
      run = await runProgram(file, p, JSON.stringify({ protocolVersion: 1, provider: p.name, ids }), this.#env(p));
    } catch (err) {
      // Anything else (a directory above it unreadable, spawn refusing its arguments) is no
      // reason to lose the other programs' answers: it fails this program's secrets only.
      return all(
        new SecretUnavailableError(
          'SECRET_PROVIDER_UNAVAILABLE',
          `${at}, asked for ${ids.map(names).join(', ')}: ${err instanceof ExecProgramError ? err.message : `could not be checked or started: ${toError(err).message}`}`,
          { retryable: err instanceof ExecProgramError && err.retryable, cause: err },
        ),
      );
    }
    let answer;
    try {
      if (run.code !== 0) {
        // Its stdout may still hold values (a partial answer): they mask what stderr says.
        let partial: Uint8Array[] = [];
        try {
          partial = [...parseExecAnswer(run.stdout, ids, p.jsonOnly).values.values()];
        } catch {
          partial = [];
        }
        const said = programText(run.stderr.toString('utf8'), this.#mask(partial), 'tail');
        for (const v of partial) v.fill(0);
        return all(
          new SecretUnavailableError(
            'SECRET_PROVIDER_UNAVAILABLE',
            `${at} ${run.code === null ? `was killed by ${run.signal}` : `exited with code ${run.code}`}${said ? `; stderr: ${said}` : ' (nothing on stderr)'}. Fix: run it by hand with the same environment (only ${p.passEnv.join(', ') || 'no variables'} passed) and the request on stdin.`,
            { retryable: true },
          ),
        );
      }
      answer = parseExecAnswer(run.stdout, ids, p.jsonOnly);
    } catch (err) {
      return all(
        new SecretUnavailableError(
          'SECRET_PROVIDER_UNAVAILABLE',
          `${at} did not answer in the exec protocol: ${err instanceof ExecResponseError ? err.message : `its answer could not be read (${toError(err).message})`}. Fix: print {"protocolVersion":1,"values":{"<id>":"<value>"}} on stdout${p.jsonOnly ? ', or set jsonOnly: false for a program that prints one bare value' : ''}.`,
        ),
      );
    } finally {
      run.stdout.fill(0);
      run.stderr.fill(0);
    }
    // Built only when a message needs it: a mask holds string forms of every value.
    let mask: SecretMask | undefined;
    const masked = (t: string): string => programText(t, (mask ??= this.#mask(answer.values.values())), 'head');
    for (const id of ids) {
      const name = names(id);
      const value = answer.values.get(id);
      const reported = answer.errors.get(id);
      const notFound = (why: string, fix: string): Outcome => ({
        error: new SecretUnavailableError(
          'SECRET_NOT_FOUND',
          `${at} ${why} for secret "${name}" (id "${id}"). Fix: ${fix}.`,
        ),
      });
      if (reported !== undefined)
        out.set(
          id,
          notFound(
            `reported an error${reported ? ` (${masked(reported)})` : ''}`,
            "check that the id exists in the program's store and that its credentials may read it",
          ),
        );
      else if (answer.notStrings.has(id))
        out.set(id, {
          error: new SecretUnavailableError(
            'SECRET_PROVIDER_UNAVAILABLE',
            `${at} answered a value that is not a string for secret "${name}" (id "${id}"). Fix: make the program print each value as a JSON string.`,
          ),
        });
      else if (!value)
        out.set(
          id,
          notFound(
            'returned no value',
            `add the id to the program's store, or correct secrets.items.${name.split('"')[0]}.exec.id`,
          ),
        );
      else if (!value.length) out.set(id, notFound('returned an empty value', "set a value in the program's store"));
      else out.set(id, { value });
    }
    return out;
  }

  /** One run per program for `names`; each name gets its value or its error. */
  async #fetch(names: readonly string[]): Promise<Map<string, Outcome>> {
    const byProgram = new Map<string, Map<string, string[]>>();
    const result = new Map<string, Outcome>();
    for (const name of new Set(names)) {
      const ref = this.#o.secrets.get(name);
      const program = ref && this.#o.programs.get(ref.program);
      if (!ref || !program) {
        result.set(name, {
          error: new SecretUnavailableError(
            'SECRET_NOT_FOUND',
            `secret "${name}" is not served by the exec provider. Fix: set secrets.items.${name}.provider to "exec" (and its exec.program) in the config.`,
          ),
        });
        continue;
      }
      const ids = byProgram.get(ref.program) ?? new Map<string, string[]>();
      ids.set(ref.id, [...(ids.get(ref.id) ?? []), name]);
      byProgram.set(ref.program, ids);
    }
    await Promise.all(
      [...byProgram].map(async ([programName, ids]) => {
        const program = this.#o.programs.get(programName);
        if (!program) return;
        const answers = await this.#ask(program, [...ids.keys()], (id) => ids.get(id)?.join('", "') ?? id);
        for (const [id, forNames] of ids) {
          const a = answers.get(id);
          if (!a) continue;
          // Two secrets asked by one id each get bytes of their own.
          forNames.forEach((n, i) => result.set(n, 'value' in a && i > 0 ? { value: a.value.slice() } : a));
        }
      }),
    );
    return result;
  }

  async lease(request: LeaseRequest): Promise<SecretLease> {
    const held = request.names.length ? await this.#fetch(request.names) : new Map<string, Outcome>();
    for (const o of held.values()) if ('value' in o) this.#live.add(o.value);
    // Scope, zero-filling of what was handed out and refusal after release: as every lease that
    // mints no per-job credential. Each read hands out a copy; the lease keeps and zeroes its own.
    const lease = declaredLease(request, (name) => {
      const o = held.get(name);
      if (!o)
        return Promise.reject(
          new SecretUnavailableError('SECRET_NOT_FOUND', `the exec provider returned nothing for "${name}"`),
        );
      if ('error' in o) return Promise.reject(o.error);
      return Promise.resolve({ value: o.value.slice(), version: EXEC_VERSION });
    });
    return {
      read: lease.read,
      release: async () => {
        await lease.release();
        for (const o of held.values()) {
          if (!('value' in o)) continue;
          o.value.fill(0);
          this.#live.delete(o.value);
        }
        held.clear();
      },
    };
  }

  async readCurrent(name: string): Promise<SecretValue> {
    const o = (await this.#fetch([name])).get(name);
    if (!o || 'error' in o)
      throw (
        o?.error ?? new SecretUnavailableError('SECRET_NOT_FOUND', `the exec provider returned nothing for "${name}"`)
      );
    return { value: o.value, version: EXEC_VERSION };
  }

  readVersion(name: string, version: string): Promise<SecretValue> {
    if (version !== EXEC_VERSION)
      return Promise.reject(
        new SecretUnavailableError(
          'SECRET_NOT_FOUND',
          `secret "${name}" has no version ${version}: the exec provider serves only the program's current value (version "${EXEC_VERSION}")`,
        ),
      );
    return this.readCurrent(name);
  }

  write(name: string): Promise<{ version: string }> {
    return readOnly(name);
  }

  writePending(name: string): Promise<{ version: string }> {
    return readOnly(name);
  }

  promote(name: string): Promise<{ version: string }> {
    return readOnly(name);
  }

  retire(name: string): Promise<void> {
    return readOnly(name);
  }

  remove(name: string): Promise<void> {
    return readOnly(name);
  }

  /** The configured names; fleet cannot know when the program's store last changed a value (updatedAt 0). */
  list(): Promise<SecretMetadata[]> {
    return Promise.resolve(
      [...this.#o.secrets.keys()].sort().map((name) => ({ name, version: EXEC_VERSION, updatedAt: 0 })),
    );
  }

  /** Every program passes the checks made before each run (it is not run: that would fetch values). */
  async check(): Promise<void> {
    const problems: string[] = [];
    for (const p of this.#o.programs.values()) {
      try {
        await checkProgram(p);
      } catch (err) {
        if (!(err instanceof ExecProgramError)) throw err;
        problems.push(err.message);
      }
    }
    if (problems.length)
      throw new SecretUnavailableError('SECRET_PROVIDER_UNAVAILABLE', `exec provider: ${problems.join('; ')}`);
  }

  close(): Promise<void> {
    for (const v of this.#live) v.fill(0);
    this.#live.clear();
    return Promise.resolve();
  }
}
