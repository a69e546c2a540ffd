import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { resolveConfig } from '../src/config/resolve.js';
import { FleetError } from '../src/errors.js';
import type { SecretProvider } from '../src/secrets/provider.js';
import { doctor } from '../src/cli/doctor/doctor.js';
import { checkProgram } from '../src/secrets/exec-program.js';
import { EXEC_VERSION, ExecProvider } from '../src/secrets/exec-provider.js';
import { parseExecAnswer } from '../src/secrets/exec-response.js';
import { makeProvider } from '../src/secrets/providers.js';
import { silentLogger } from '../src/observability/logger.js';
import { execTestBackend, program, programDir, writeProgram } from './helpers/exec-provider.js';
import { CONTRACT_SECRETS, CONTRACT_UNDECLARED, providerContract } from './helpers/provider-contract.js';
import {
  FIXTURES,
  fixtureType,
  guardAgainstLeaks,
  makeProducer,
  startSupervisor,
  testConfig,
  waitForJob,
} from './helpers/fleet.js';
import { capturingLogger, scanForLeaks } from './helpers/leaks.js';
import { useTestRedis } from './helpers/redis.js';

const redis = useTestRedis();
guardAgainstLeaks();

const text = (v: Uint8Array): string => Buffer.from(v).toString('utf8');
const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
const lease = (p: ExecProvider, names: string[]) => p.lease({ jobId: 'job-1', jobType: 't', names, ttlMs: 5000 });

/** One provider over one program serving `names` (each asked by its own name unless `ids` says otherwise). */
function providerFor(
  command: string,
  names: string[],
  extra: Parameters<typeof program>[1] = {},
  ids: Record<string, string> = {},
): ExecProvider {
  return new ExecProvider({
    programs: new Map([['test', program(command, extra)]]),
    secrets: new Map(names.map((n) => [n, { program: 'test', id: ids[n] ?? n }])),
  });
}

/** The error `p` rejects with (failing the test when it resolves). */
async function failure(p: Promise<unknown>): Promise<FleetError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof FleetError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

/** Whether a process is gone (a zombie waiting for its reaper counts as gone: it runs nothing). */
function gone(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') ?? true;
  } catch {
    return true;
  }
}

const backends: { release(): void }[] = [];
afterEach(() => backends.splice(0).forEach((b) => b.release()));

describe('exec answer parsing (no JSON.parse: values never become strings)', () => {
  it('decodes every escape, non-ASCII text and surrogate pairs exactly as JSON.parse would', () => {
    const samples = [
      'plain',
      'quote " and \\ backslash',
      'tab\tnew\nline\r',
      'é ü 漢字',
      '😀 pair',
      '\u0001\u001f',
      '/',
    ];
    for (const s of samples) {
      const raw = Buffer.from(JSON.stringify({ protocolVersion: 1, values: { a: s } }));
      const a = parseExecAnswer(raw, ['a'], true);
      expect(text(a.values.get('a')!)).toBe(s);
    }
    // Escaped forms JSON.stringify never writes.
    const raw = Buffer.from('{"protocolVersion":1,"values":{"a":"\\u00e9\\/\\ud83d\\ude00\\u0041","b":"\\ud800x"}}');
    const a = parseExecAnswer(raw, ['a', 'b'], true);
    expect(text(a.values.get('a')!)).toBe('é/😀A');
    expect(text(a.values.get('b')!)).toBe(Buffer.from('\ud800x').toString());
  });

  it('keeps ids, per-id errors and non-string values apart, and drops values it was not asked for', () => {
    const raw = Buffer.from(
      JSON.stringify({
        protocolVersion: 1,
        values: { a: 'va', n: 42, extra: 'not-asked' },
        errors: { e: { message: ' locked ' }, f: {}, unasked: { message: 'x' } },
      }),
    );
    const a = parseExecAnswer(raw, ['a', 'n', 'e', 'f', 'missing'], true);
    expect([...a.values.keys()]).toEqual(['a']);
    expect([...a.errors]).toEqual([
      ['e', 'locked'],
      ['f', ''],
    ]);
    expect([...a.notStrings]).toEqual(['n']);
  });

  it('refuses what is not a protocol answer, naming what is wrong', () => {
    const bad = (s: string, msg: RegExp) => expect(() => parseExecAnswer(Buffer.from(s), ['a'], true)).toThrow(msg);
    bad('', /printed nothing/);
    bad('not json', /stdout is not JSON: unexpected character at byte 0/);
    bad('{"protocolVersion":1,"values":{"a":"x"}} trailing', /trailing data/);
    bad('{"protocolVersion":1,"values":{"a":"x\u0001"}}', /control character/);
    bad('{"protocolVersion":2,"values":{}}', /protocolVersion must be 1, got 2/);
    bad('{"values":{}}', /protocolVersion must be 1, got none/);
    // A string there is not echoed: a program could print a value in its place.
    bad('{"protocolVersion":"sk_live_0123456789abcdef","values":{}}', /protocolVersion must be 1, got a string$/);
    bad('{"protocolVersion":1}', /no "values" object/);
    bad('["a"]', /must be a JSON object/);
    bad('"a"', /must be a JSON object/);
    bad(`${'['.repeat(100)}${']'.repeat(100)}`, /nested deeper than 64/);
  });

  it('with jsonOnly: false and one id, takes a bare value (trimmed) or a JSON string, but still reads a protocol answer', () => {
    const one = (s: string) => text(parseExecAnswer(Buffer.from(s), ['value'], false).values.get('value')!);
    expect(one('  s3cr3t-value\n')).toBe('s3cr3t-value');
    expect(one('"quoted \\"value\\""\n')).toBe('quoted "value"');
    expect(one('1234\n')).toBe('1234');
    expect(one('{"type":"service_account","key":"k"}')).toBe('{"type":"service_account","key":"k"}');
    expect(one('{"protocolVersion":1,"values":{"value":"from-json"}}')).toBe('from-json');
    expect(() => parseExecAnswer(Buffer.from('bare'), ['a', 'b'], false)).toThrow(/not JSON/);
  });
});

describe('exec provider', () => {
  it('runs the program once per job start for all its names, with the request on stdin', async () => {
    const b = execTestBackend(['api-key', 'db-password']);
    backends.push(b);
    b.set('api-key', 'sk-exec-0123456789');
    b.set('db-password', 'pw "quoted" ü');
    const l = await lease(b.provider, ['api-key', 'db-password']);
    const k = await l.read('api-key');
    expect(text(k.value)).toBe('sk-exec-0123456789');
    expect(k.version).toBe(EXEC_VERSION);
    expect(text((await l.read('db-password')).value)).toBe('pw "quoted" ü');
    expect(b.runs()).toBe(1);
    const request = JSON.parse(readFileSync(path.join(b.dir, 'runs.log'), 'utf8').trim()) as unknown;
    expect(request).toEqual({ protocolVersion: 1, provider: 'store', ids: ['api-key', 'db-password'] });
    await expect(l.read('other')).rejects.toMatchObject({ code: 'SECRET_PERMISSION_DENIED' });
    await l.release();
    await expect(l.read('api-key')).rejects.toThrow(/was released/);
  });

  it('hands out copies and zero-fills the bytes it holds when the lease is released', async () => {
    const b = execTestBackend(['k']);
    backends.push(b);
    b.set('k', 'zero-me-please');
    const l = await lease(b.provider, ['k']);
    const held: Uint8Array[] = [];
    const slice = vi.spyOn(Uint8Array.prototype, 'slice').mockImplementation(function (this: Uint8Array, ...args) {
      held.push(this);
      return Uint8Array.prototype.subarray.apply(this, args).map((x) => x);
    });
    const first = await l.read('k');
    slice.mockRestore();
    first.value.fill(0);
    expect(text((await l.read('k')).value)).toBe('zero-me-please');
    expect(held).toHaveLength(1);
    await l.release();
    expect(held[0]!.every((x) => x === 0)).toBe(true);
  });

  it('maps per-id errors and missing ids to SECRET_NOT_FOUND with the program message, masked and cut short', async () => {
    const dir = programDir();
    const cmd = writeProgram(
      dir,
      'partial',
      `answer({ protocolVersion: 1, values: { good: 'value-good-123', weird: 7 },
        errors: { bad: { message: 'vault locked; good was value-good-123 ' + 'x'.repeat(1000) } } });`,
    );
    const p = providerFor(cmd, ['good', 'bad', 'absent', 'weird']);
    const l = await lease(p, ['good', 'bad', 'absent', 'weird']);
    expect(text((await l.read('good')).value)).toBe('value-good-123');
    const bad = await failure(l.read('bad'));
    expect(bad).toMatchObject({ code: 'SECRET_NOT_FOUND', retryable: false });
    expect(bad.message).toContain('reported an error (vault locked; good was *** xxx');
    expect(bad.message).not.toContain('value-good-123');
    expect(bad.message.length).toBeLessThan(700);
    await expect(l.read('absent')).rejects.toMatchObject({
      code: 'SECRET_NOT_FOUND',
      message: expect.stringContaining('returned no value for secret "absent" (id "absent")'),
    });
    await expect(l.read('weird')).rejects.toThrow(/not a string for secret "weird"/);
    await l.release();
  });

  it('asks by the configured id, and two secrets sharing an id get their own bytes', async () => {
    const dir = programDir();
    const cmd = writeProgram(
      dir,
      'ids',
      `answer({ protocolVersion: 1, values: { 'prod/db:password': 'by-id-value' } });`,
    );
    const p = providerFor(cmd, ['db', 'db-copy'], {}, { db: 'prod/db:password', 'db-copy': 'prod/db:password' });
    const l = await lease(p, ['db', 'db-copy']);
    const a = await l.read('db');
    expect(text(a.value)).toBe('by-id-value');
    a.value.fill(0);
    expect(text((await l.read('db-copy')).value)).toBe('by-id-value');
    await l.release();
  });

  it("one program's failure leaves the other programs' secrets readable", async () => {
    const dir = programDir();
    const good = writeProgram(dir, 'good', `answer({ protocolVersion: 1, values: { a: 'from-good-program' } });`);
    const link = path.join(dir, 'link');
    symlinkSync(good, link);
    const p = new ExecProvider({
      programs: new Map([
        ['good', program(good, { name: 'good' })],
        ['linked', program(link, { name: 'linked' })],
      ]),
      secrets: new Map([
        ['a', { program: 'good', id: 'a' }],
        ['b', { program: 'linked', id: 'b' }],
      ]),
    });
    const l = await lease(p, ['a', 'b']);
    expect(text((await l.read('a')).value)).toBe('from-good-program');
    await expect(l.read('b')).rejects.toMatchObject({
      code: 'SECRET_PROVIDER_UNAVAILABLE',
      retryable: false,
      message: expect.stringContaining('exec program "linked"'),
    });
    await l.release();
  });

  it('kills a hanging program and its whole process group at the timeout', async () => {
    const dir = programDir();
    const pids = path.join(dir, 'pids');
    const cmd = writeProgram(
      dir,
      'hang',
      `const { spawn } = await import('node:child_process');
      const kid = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
      require('node:fs').writeFileSync(${JSON.stringify(pids)}, JSON.stringify([process.pid, kid.pid]));
      setInterval(() => {}, 1000);`,
    );
    const p = providerFor(cmd, ['k'], { timeoutMs: 1500 });
    const started = Date.now();
    const l = await lease(p, ['k']);
    const err = await failure(l.read('k'));
    expect(Date.now() - started).toBeLessThan(5000);
    expect(err).toMatchObject({ code: 'SECRET_PROVIDER_UNAVAILABLE', retryable: true });
    expect(err.message).toContain('timed out after 1500 ms; its process group was killed');
    expect(err.message).toContain('secrets.exec.test.timeoutMs');
    const [leader, child] = JSON.parse(readFileSync(pids, 'utf8')) as [number, number];
    await vi.waitFor(() => expect([gone(leader), gone(child)]).toEqual([true, true]), { timeout: 3000 });
  });

  it('kills a program that prints more than maxOutputBytes', async () => {
    const dir = programDir();
    const cmd = writeProgram(
      dir,
      'chatty',
      `for (;;) { process.stdout.write('y'.repeat(65536)); await new Promise((r) => setImmediate(r)); }`,
    );
    const p = providerFor(cmd, ['k'], { maxOutputBytes: 100_000 });
    const l = await lease(p, ['k']);
    await expect(l.read('k')).rejects.toMatchObject({
      code: 'SECRET_PROVIDER_UNAVAILABLE',
      retryable: false,
      message: expect.stringContaining('printed more than 100000 bytes (stdout and stderr together) and was killed'),
    });
  });

  it('refuses output that is not JSON, and a wrong protocolVersion, naming the fix', async () => {
    const dir = programDir();
    const notJson = providerFor(writeProgram(dir, 'text', `process.stdout.write('hello');`), ['k']);
    await expect((await lease(notJson, ['k'])).read('k')).rejects.toMatchObject({
      code: 'SECRET_PROVIDER_UNAVAILABLE',
      retryable: false,
      message: expect.stringMatching(/did not answer in the exec protocol: stdout is not JSON.*set jsonOnly: false/),
    });
    const v2 = providerFor(writeProgram(dir, 'v2', `answer({ protocolVersion: 2, values: { k: 'x' } });`), ['k']);
    await expect((await lease(v2, ['k'])).read('k')).rejects.toThrow(/protocolVersion must be 1, got 2/);
  });

  it('takes a bare value from a jsonOnly: false program (op read, sops --extract)', async () => {
    const dir = programDir();
    const op = writeProgram(dir, 'op', `process.stdout.write('ops-value-987\\n');`);
    const p = providerFor(op, ['stripe'], { jsonOnly: false }, { stripe: 'value' });
    expect(text((await (await lease(p, ['stripe'])).read('stripe')).value)).toBe('ops-value-987');
  });

  it('reports a non-zero exit with its stderr, masking values it printed and values other jobs hold', async () => {
    const dir = programDir();
    const ok = execTestBackend(['held']);
    backends.push(ok);
    ok.set('held', 'held-by-another-job-42');
    const other = await lease(ok.provider, ['held']);
    const cmd = writeProgram(
      dir,
      'fails',
      `answer({ protocolVersion: 1, values: { k: 'partial-value-77' } });
      process.stderr.write('error: session expired (partial-value-77, held-by-another-job-42)\\n');
      process.exit(3);`,
    );
    // The same provider instance serves both programs, as in a supervisor.
    const p = new ExecProvider({
      programs: new Map([
        ['store', ok.program],
        ['test', program(cmd)],
      ]),
      secrets: new Map([
        ['held', { program: 'store', id: 'held' }],
        ['k', { program: 'test', id: 'k' }],
      ]),
    });
    const mine = await lease(p, ['held']);
    const err = await failure((await lease(p, ['k'])).read('k'));
    expect(err).toMatchObject({ code: 'SECRET_PROVIDER_UNAVAILABLE', retryable: true });
    expect(err.message).toContain('exited with code 3; stderr: error: session expired (***, ***)');
    expect(err.message).not.toContain('partial-value-77');
    expect(err.message).not.toContain('held-by-another-job-42');
    await mine.release();
    await other.release();
  });

  it('passes only the listed environment variables (not PATH, not HOME, not the supervisor credentials)', async () => {
    const dir = programDir();
    const cmd = writeProgram(
      dir,
      'env',
      `answer({ protocolVersion: 1, values: { env: JSON.stringify(process.env) } });`,
    );
    process.env.FLEET_TEST_PASSED = 'passed-value';
    process.env.FLEET_TEST_SUPERVISOR_TOKEN = 'hvs.not-for-programs';
    try {
      const p = providerFor(cmd, ['env'], { passEnv: ['FLEET_TEST_PASSED', 'FLEET_TEST_UNSET'], env: { FIXED: 'f' } });
      const env = JSON.parse(text((await (await lease(p, ['env'])).read('env')).value)) as Record<string, string>;
      expect(env).toEqual({ FLEET_TEST_PASSED: 'passed-value', FIXED: 'f' });
    } finally {
      delete process.env.FLEET_TEST_PASSED;
      delete process.env.FLEET_TEST_SUPERVISOR_TOKEN;
    }
  });

  it('is read-only: writes, rotation steps and removal are refused naming the fix', async () => {
    const b = execTestBackend(['k']);
    backends.push(b);
    const sp: SecretProvider = b.provider;
    for (const attempt of [
      sp.write('k', Buffer.from('x')),
      sp.writePending('k', Buffer.from('x')),
      sp.promote('k', '2'),
      sp.retire('k', '1'),
      sp.remove('k'),
    ])
      await expect(attempt).rejects.toMatchObject({
        code: 'SECRET_PERMISSION_DENIED',
        message: expect.stringContaining(
          `the exec provider is read-only: set the value of secret "k" in the program's own store`,
        ),
      });
    await expect(b.provider.readVersion('k', '3')).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND' });
    b.set('k', 'current-value');
    expect(text((await b.provider.readVersion('k', EXEC_VERSION)).value)).toBe('current-value');
    expect(await b.provider.list()).toEqual([{ name: 'k', version: EXEC_VERSION, updatedAt: 0 }]);
  });
});

describe('exec program checks', () => {
  const refused = async (command: string, message: string, extra: Parameters<typeof program>[1] = {}) => {
    await expect(checkProgram(program(command, extra))).rejects.toThrow(message);
    // The same refusal fails the job's secret, never running the program.
    const l = await lease(providerFor(command, ['k'], extra), ['k']);
    await expect(l.read('k')).rejects.toMatchObject({
      code: 'SECRET_PROVIDER_UNAVAILABLE',
      message: expect.stringContaining(message),
    });
  };
  const ok = (dir: string) => writeProgram(dir, 'ok', `answer({ protocolVersion: 1, values: { k: 'v' } });`);

  it('refuses a relative path, a missing file and a directory', async () => {
    const dir = programDir();
    await refused('bin/resolver', 'is not an absolute path');
    await refused(path.join(dir, 'nope'), 'does not exist');
    mkdirSync(path.join(dir, 'sub'), { mode: 0o700 });
    await refused(path.join(dir, 'sub'), 'is not a regular file');
  });

  it('refuses a symlink unless allowed, and then checks its target against trustedDirs', async () => {
    const dir = programDir();
    const target = ok(dir);
    const link = path.join(dir, 'link');
    symlinkSync(target, link);
    await refused(link, `is a symlink, which someone could repoint. Fix: give the real path (${target})`);
    expect(await checkProgram(program(link, { allowSymlinkCommand: true, trustedDirs: [dir] }))).toBe(target);
    await refused(link, `resolves to ${target}, outside trustedDirs (/opt/homebrew)`, {
      allowSymlinkCommand: true,
      trustedDirs: ['/opt/homebrew'],
    });
  });

  it('checks where a symlinked directory on the path leads: a writable directory there is refused too', async () => {
    // root/shared (0777, not sticky) holds tools/resolver; root/safe/bin -> root/shared/tools. Anyone who
    // can write to shared could swap tools for a program of their own behind the safe-looking path.
    const root = programDir();
    const shared = path.join(root, 'shared');
    mkdirSync(path.join(shared, 'tools'), { recursive: true, mode: 0o755 });
    const real = ok(path.join(shared, 'tools'));
    mkdirSync(path.join(root, 'safe'), { mode: 0o755 });
    symlinkSync(path.join(shared, 'tools'), path.join(root, 'safe', 'bin'));
    const viaLink = path.join(root, 'safe', 'bin', 'ok');
    expect(await checkProgram(program(viaLink))).toBe(real);
    chmodSync(shared, 0o777);
    await refused(
      viaLink,
      `lies in ${shared}, which is writable by everyone (mode 777): anyone there could swap the program`,
    );
  });

  it('refuses a world- or group-writable program or directory, and one that is not executable', async () => {
    const dir = programDir();
    const file = ok(dir);
    chmodSync(file, 0o757);
    await refused(file, 'is writable by everyone (mode 757). Fix: chmod go-w');
    chmodSync(file, 0o775);
    await refused(file, 'is writable by its group (mode 775)');
    chmodSync(file, 0o644);
    await refused(file, 'is not executable by this user. Fix: chmod +x');
    chmodSync(file, 0o755);
    chmodSync(dir, 0o777);
    await refused(
      file,
      `lies in ${dir}, which is writable by everyone (mode 777): anyone there could swap the program`,
    );
    // A sticky directory (like /tmp) is fine: only an entry's owner may rename it.
    chmodSync(dir, 0o1777);
    expect(await checkProgram(program(file))).toBe(file);
  });

  it.skipIf(process.getuid?.() !== 0)('refuses a program or directory owned by another user', async () => {
    const dir = programDir();
    const file = ok(dir);
    chownSync(file, 65534, 65534);
    await refused(file, 'is owned by uid 65534, neither root nor this process');
    chownSync(file, 0, 0);
    chownSync(dir, 65534, 65534);
    await refused(file, `lies in ${dir}, which is owned by uid 65534`);
  });

  it('check() reports every program that fails, doctor names it and warns that rotation happens elsewhere', async () => {
    const dir = programDir();
    const good = ok(dir);
    const link = path.join(dir, 'link');
    symlinkSync(good, link);
    const config = testConfig(redis.url, [fixtureType('reader', 'secret-reader.mjs', { secrets: ['a', 'b'] })], {
      secrets: {
        items: {
          a: { provider: 'exec', exec: { program: 'good' } },
          b: { provider: 'exec', exec: { program: 'linked' } },
        },
        exec: { good: { command: good }, linked: { command: link } },
      },
    });
    const p = await makeProvider('exec', config, { logger: silentLogger });
    await expect(p.check()).rejects.toThrow(/secrets\.exec\.linked\.command \(.*link\) is a symlink/);
    const checks = await doctor(config, redis.client, { production: false, metricsUrls: [] });
    expect(checks.find((c) => c.check === 'exec: credentials')).toMatchObject({
      status: 'FAIL',
      detail: expect.stringContaining('is a symlink'),
    });
    expect(checks.find((c) => c.check === 'secret a: rotation policy')).toMatchObject({
      status: 'WARN',
      detail: expect.stringContaining("rotated in the program's own store"),
    });
  });
});

describe('exec provider configuration', () => {
  const base =
    (secrets: Record<string, unknown>, types = [fixtureType('reader', 'secret-reader.mjs', { secrets: ['a'] })]) =>
    () =>
      resolveConfig({ dataDir: '/tmp/unused', jobTypes: types, secrets }, { baseDir: FIXTURES });

  it('refuses a relative command, an unknown or ambiguous program, and exec settings on another provider', () => {
    expect(base({ provider: 'exec', exec: { p: { command: 'op' } } })).toThrow(
      /secrets\.exec\.p\.command: must be an absolute path \(there is no shell and no PATH lookup\)/,
    );
    expect(
      base({
        provider: 'exec',
        items: { a: { exec: { program: 'q' } }, 'audit-mac-key': { provider: 'local' } },
        exec: { p: { command: '/bin/true' } },
      }),
    ).toThrow(/secrets\.items\.a\.exec\.program is "q", which secrets\.exec does not configure \(it has p\)/);
    expect(
      base({ items: { a: { provider: 'exec' } }, exec: { p: { command: '/bin/true' }, q: { command: '/bin/true' } } }),
    ).toThrow(/secrets\.exec has several programs \(p, q\)\. Fix: set secrets\.items\.a\.exec\.program/);
    expect(base({ items: { a: { provider: 'exec' } } })).toThrow(/secrets\.exec names no program/);
    expect(base({ items: { a: { exec: { id: 'x' } } } })).toThrow(
      /secrets\.items\.a\.exec is set but the secret's provider is "local"/,
    );
  });

  it('refuses a rotation policy on an exec secret, the audit MAC key from exec, and a bare-value program with several ids', () => {
    const exec = { p: { command: '/bin/true' } };
    expect(
      base({ items: { a: { provider: 'exec', rotation: { schedule: 'weekly', rotator: { type: 'random' } } } }, exec }),
    ).toThrow(/secrets\.items\.a\.rotation: the secret comes from the exec provider, which is read-only/);
    expect(base({ provider: 'exec', exec })).toThrow(
      /the audit MAC key "audit-mac-key".*would come from the exec provider/,
    );
    expect(
      base(
        {
          items: { a: { provider: 'exec' }, b: { provider: 'exec' } },
          exec: { p: { command: '/bin/true', jsonOnly: false } },
        },
        [fixtureType('reader', 'secret-reader.mjs', { secrets: ['a', 'b'] })],
      ),
    ).toThrow(/secrets\.exec\.p has jsonOnly: false but answers for 2 ids \(a, b\)/);
  });
});

describe('exec secrets in jobs', () => {
  it('a job reads its exec secrets through a real supervisor; one run per job, and the values leak nowhere', async () => {
    const b = execTestBackend([]);
    backends.push(b);
    const values = { 'api-key': 'sk-exec-live-abcdef123456', 'db-password': 'hunter2-exec/Secret?&=' };
    for (const [k, v] of Object.entries(values)) b.set(k, v);
    const config = testConfig(
      redis.url,
      [fixtureType('reader', 'secret-reader.mjs', { secrets: Object.keys(values) })],
      {
        secrets: {
          items: { 'api-key': { provider: 'exec' }, 'db-password': { provider: 'exec' } },
          exec: {
            store: { command: b.program.command, env: b.program.env },
          },
        },
      },
    );
    const { logger, lines } = capturingLogger();
    const sup = await startSupervisor({ config, logger });
    let alive = 0;
    sup.events.on('secret:values', (e) => (alive += e.delta));
    const p = makeProducer(config);
    const job = await waitForJob(p, (await p.enqueue('reader', { names: Object.keys(values) })).id);
    expect(job.state).toBe('completed');
    expect(job.result).toEqual({
      'api-key': { length: values['api-key'].length, sha256: sha(values['api-key']) },
      'db-password': { length: values['db-password'].length, sha256: sha(values['db-password']) },
    });
    expect(b.runs()).toBe(1);
    expect(alive).toBe(0);

    // A value removed from the store fails the next job with the program's reason, not a retry.
    b.delete('db-password');
    const failed = await waitForJob(p, (await p.enqueue('reader', { names: Object.keys(values) })).id);
    expect(failed.state).toBe('failed');
    expect(failed.error).toMatchObject({ code: 'SECRET_NOT_FOUND' });
    expect(failed.error!.message).toContain('reported an error (no such item) for secret "db-password"');
    const hits = await scanForLeaks(redis.url, Object.values(values), {
      logs: lines.join(''),
      results: JSON.stringify([job, failed]),
    });
    expect(hits).toEqual([]);
    expect(existsSync(path.join(b.dir, 'store.json'))).toBe(true);
  });
});

describe('exec provider: the shared provider contract (read-only)', () => {
  providerContract({
    readOnly: true,
    open: async () => {
      const backend = execTestBackend([...CONTRACT_SECRETS, CONTRACT_UNDECLARED]);
      return {
        provider: backend.provider,
        seed: async (name, value) => backend.set(name, Buffer.from(value).toString()),
        release: async () => backend.release(),
      };
    },
  });
});
