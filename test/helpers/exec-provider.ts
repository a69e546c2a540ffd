import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ExecProgram } from '../../src/secrets/exec-program.js';
import { ExecProvider } from '../../src/secrets/exec-provider.js';

/** A fresh directory for provider programs (mode 0700, so the program checks pass). */
export function programDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-exec-'));
  chmodSync(dir, 0o700);
  return dir;
}

/**
 * Writes an executable Node program (`#!` to this Node) into `dir`: `body` runs with `request`
 * (the parsed stdin) and `answer(obj)` (prints JSON to stdout) in scope.
 */
export function writeProgram(dir: string, name: string, body: string): string {
  const file = path.join(dir, name);
  writeFileSync(
    file,
    `#!${process.execPath}
const chunks = [];
process.stdin.on('data', (c) => chunks.push(c));
process.stdin.on('end', async () => {
  const request = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : null;
  const answer = (obj) => process.stdout.write(JSON.stringify(obj));
  ${body}
});
`,
    { mode: 0o755 },
  );
  chmodSync(file, 0o755);
  return file;
}

/** An `ExecProgram` with test defaults. */
export function program(command: string, extra: Partial<ExecProgram> = {}): ExecProgram {
  return {
    name: 'test',
    command,
    args: [],
    passEnv: [],
    env: {},
    timeoutMs: 5000,
    maxOutputBytes: 1024 * 1024,
    jsonOnly: true,
    allowSymlinkCommand: false,
    trustedDirs: [],
    ...extra,
  };
}

/**
 * An exec provider over a resolver program whose store is a JSON file the test edits (`set`,
 * `delete`): what an operator does in 1Password or Bitwarden, since the provider itself is
 * read-only. For the shared provider contract suite (read-only mode) and the exec tests. Each
 * secret is asked for by its own name. `runs()` counts the program's runs.
 */
export function execTestBackend(names: readonly string[]): {
  provider: ExecProvider;
  /** The resolver program, for a provider or config of the test's own. */
  program: ExecProgram;
  dir: string;
  set(name: string, value: string): void;
  delete(name: string): void;
  runs(): number;
  release(): void;
} {
  const dir = programDir();
  const store = path.join(dir, 'store.json');
  const log = path.join(dir, 'runs.log');
  writeFileSync(store, '{}', { mode: 0o600 });
  writeFileSync(log, '', { mode: 0o600 });
  const command = writeProgram(
    dir,
    'resolver',
    `const fs = await import('node:fs');
  fs.appendFileSync(process.env.RUN_LOG, JSON.stringify(request) + '\\n');
  const store = JSON.parse(fs.readFileSync(process.env.STORE_FILE, 'utf8'));
  const values = {};
  const errors = {};
  for (const id of request.ids) {
    if (id in store) values[id] = store[id];
    else errors[id] = { message: 'no such item' };
  }
  answer({ protocolVersion: 1, values, errors });`,
  );
  const resolver = program(command, { name: 'store', env: { STORE_FILE: store, RUN_LOG: log } });
  const provider = new ExecProvider({
    programs: new Map([['store', resolver]]),
    secrets: new Map(names.map((n) => [n, { program: 'store', id: n }])),
  });
  const edit = (fn: (s: Record<string, string>) => void): void => {
    const s = JSON.parse(readFileSync(store, 'utf8')) as Record<string, string>;
    fn(s);
    writeFileSync(store, JSON.stringify(s));
  };
  return {
    provider,
    program: resolver,
    dir,
    set: (name, value) => edit((s) => (s[name] = value)),
    delete: (name) => edit((s) => delete s[name]),
    runs: () => readFileSync(log, 'utf8').split('\n').filter(Boolean).length,
    release: () => rmSync(dir, { recursive: true, force: true }),
  };
}
