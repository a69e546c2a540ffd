/**
 * Unit tests of the pure modules: no servers, no processes, milliseconds. `npm run test:unit`
 * runs them alone; `npm test` runs them with everything else.
 */
import { Readable } from 'node:stream';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { parseDuration } from '../src/config/duration.js';
import { isLoopbackHost, matchesEgress, patternCovered, splitHostPort } from '../src/config/hosts.js';
import { scheduleOf } from '../src/config/schedule.js';
import {
  deserializeError,
  errnoCode,
  fieldOf,
  formatFailedReason,
  parseFailedReason,
  SecretScopeError,
  serializeError,
  TimeoutError,
  tlsFailureOf,
} from '../src/errors.js';
import { idempotentJobId, jobTypeOfId, newJobId } from '../src/producers/job-id.js';
import { REDIS_ROLES, roleRules, serverFeatures, urlWithCredential } from '../src/redis/acl.js';
import { redactUrl } from '../src/redis/connection.js';
import { isClusterUrl, redisUrlNodes, redisUrlProblem } from '../src/config/redis-url.js';
import { isRedisTlsUrl } from '../src/config/tls.js';
import { AuditKeyRing, canonical, ChainWriter, compareIds, verifyEntries } from '../src/secrets/audit-chain.js';
import { bindingAllows, InjectionRegistry, PLACEHOLDER } from '../src/secrets/injection.js';
import { ValueMasker } from '../src/workers/egress-masker.js';
import { makeLogger, prettyLine } from '../src/observability/logger.js';
import { isOneOf, required } from '../src/guards.js';
import { parseControlMessage } from '../src/workers/control.js';
import { rotatorOf } from '../src/workers/processor-api.js';
import { SecretMask } from '../src/secrets/secret-mask.js';
import { ChannelError, encodeFrame, FrameDecoder } from '../src/workers/channel.js';
import { parseFromSandbox } from '../src/workers/protocol-schema.js';
import { errorFromSandbox } from '../src/workers/sandbox.js';
import { deniedSyscalls, seccompProgram } from '../src/workers/seccomp-filter.js';
import { ESLint } from 'eslint';

describe('pure modules', () => {
  it('durations and schedules', () => {
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('2w')).toBe(1_209_600_000);
    expect(() => parseDuration('5 minutes')).toThrow(/not a duration/);
    expect(scheduleOf('daily')).toEqual({ every: 86_400_000, intervalMs: 86_400_000 });
    expect(scheduleOf('6h')).toEqual({ every: 21_600_000, intervalMs: 21_600_000 });
    expect(scheduleOf('0 3 * * *')).toEqual({ pattern: '0 3 * * *', intervalMs: 86_400_000 });
    expect(scheduleOf('0 3 * * 1')).toEqual({ pattern: '0 3 * * 1', intervalMs: 604_800_000 });
    expect(scheduleOf('*/5 * * * *')).toEqual({ pattern: '*/5 * * * *', intervalMs: null });
    expect(() => scheduleOf('500ms')).toThrow(/not a schedule/);
    expect(() => scheduleOf('0s')).toThrow(/below 1s/);
  });

  it('job ids carry their type; idempotent ids are stable and reveal nothing of the key', () => {
    const id = newJobId('charge');
    expect(jobTypeOfId(id)).toBe('charge');
    const a = idempotentJobId('charge', 'shop', 'order-42');
    expect(a).toBe(idempotentJobId('charge', 'shop', 'order-42'));
    expect(a).not.toBe(idempotentJobId('charge', 'other-shop', 'order-42'));
    expect(a).not.toContain('order-42');
    expect(jobTypeOfId(a)).toBe('charge');
    expect(jobTypeOfId('../etc/passwd')).toBeNull();
    expect(jobTypeOfId('charge.xyz')).toBeNull();
  });

  it('errors keep their code and retryability across the sandbox boundary and in failedReason', () => {
    const back = deserializeError(serializeError(new TimeoutError('took too long')));
    expect(back).toMatchObject({ code: 'TIMEOUT', message: 'took too long', retryable: true });
    expect(deserializeError(serializeError(new SecretScopeError('nope')))).toMatchObject({
      code: 'SECRET_SCOPE',
      retryable: false,
    });
    expect(serializeError('a thrown string')).toMatchObject({ message: 'a thrown string' });
    expect(parseFailedReason(formatFailedReason(new TimeoutError('slow')))).toEqual({
      code: 'TIMEOUT',
      message: 'slow',
    });
  });

  it('Redis URLs: cluster detection, redaction, a role credential put in (URL-encoded)', () => {
    expect(isClusterUrl('redis-cluster://a:7000,b:7001')).toBe(true);
    expect(isClusterUrl('redis://a:6379')).toBe(false);
    expect(redactUrl('redis://u:secret@h:6379/0')).not.toContain('secret');
    expect(redactUrl('redis-cluster://u:secret@a:1,b:2')).toBe('redis-cluster://***@a:1,b:2');
    expect(urlWithCredential('redis://old:pw@h:6379', { username: 'fleet-api', password: 'p@ss/w' })).toBe(
      'redis://fleet-api:p%40ss%2Fw@h:6379',
    );
    expect(urlWithCredential('redis-cluster://a:1,b:2', { username: 'fleet-ops', password: 'x' })).toBe(
      'redis-cluster://fleet-ops:x@a:1,b:2',
    );
  });

  it('ACL rules: every role drops @dangerous, CLIENT SETINFO only where the server knows it', () => {
    for (const role of REDIS_ROLES) {
      const rules = roleRules(role, 'fleet');
      expect(rules.slice(0, 3)).toEqual(['resetkeys', 'resetchannels', '-@all']);
      expect(rules).not.toContain('+@all');
      expect(rules).not.toContain('+client|setinfo');
      expect(roleRules(role, 'fleet', serverFeatures('7.2.4'))).toContain('+client|setinfo');
    }
    expect(serverFeatures('7.0.15').clientSetinfo).toBe(false);
    expect(serverFeatures('8.2.3').clientSetinfo).toBe(true);
    // No job-queue pattern covers the audit keys.
    expect(
      roleRules('worker', 'fleet')
        .filter((r) => r.startsWith('~') && !r.startsWith('('))
        .join(' '),
    ).toBe('~fleet:{*}:*');
  });

  it('host patterns of egress policies and secret bindings', () => {
    expect(splitHostPort('[::1]:8443', 443)).toEqual({ host: '::1', port: 8443 });
    expect(matchesEgress('*.stripe.com', 'api.stripe.com', 443)).toBe(true);
    expect(matchesEgress('*.stripe.com', 'stripe.com', 443)).toBe(false);
    expect(matchesEgress('api.stripe.com', 'api.stripe.com', 80)).toBe(false);
    expect(patternCovered('api.stripe.com', ['*.stripe.com'])).toBe(true);
    expect(patternCovered('api.stripe.com:8443', ['*.stripe.com'])).toBe(false);
    expect(
      bindingAllows(
        { hosts: ['api.stripe.com'], header: 'authorization', format: 'Bearer {value}', body: false },
        'evil.com',
        443,
      ),
    ).toBe(false);
  });

  it('placeholders: issued per job, zero-filled and retired at job end', () => {
    const reg = new InjectionRegistry();
    const value = new Uint8Array(Buffer.from('sk-value-0123'));
    const binding = { hosts: ['a.example'], header: 'authorization', format: 'Bearer {value}', body: false };
    const ph = reg.issue('t.1', 't', 'k', value, binding);
    expect(ph).toMatch(PLACEHOLDER);
    expect(reg.lookup(ph)).toMatchObject({ state: 'active' });
    expect(reg.valuesOf('t.1')).toHaveLength(1);
    expect(reg.endJob('t.1')).toBe(1);
    expect([...value].every((b) => b === 0)).toBe(true);
    expect(reg.lookup(ph)).toEqual({ state: 'retired', jobId: 't.1', jobType: 't', secret: 'k' });
    expect(reg.lookup('fleet-ph-' + '0'.repeat(40))).toEqual({ state: 'unknown' });
  });

  it('logs: one readable line per event on a terminal, JSON otherwise', () => {
    const lines: string[] = [];
    const dest = { write: (s: string) => void lines.push(s) };
    makeLogger({ destination: dest, format: 'pretty' })
      .scope({ jobType: 'echo' })
      .warn('job failed', { attempt: 2, error: 'boom here' });
    expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d WARN  job failed {2}jobType=echo attempt=2 error="boom here"\n$/);
    makeLogger({ destination: dest, format: 'json' }).info('plain');
    expect(JSON.parse(lines[1]!)).toMatchObject({ level: 30, msg: 'plain' });
    expect(prettyLine('not json')).toBe('not json');
  });

  it('the response masker finds a value split across chunks', async () => {
    const value = Buffer.from('sk-live-0123456789');
    const masker = new ValueMasker([{ value, by: Buffer.from('PLACEHOLDER') }]);
    const chunks = ['{"key":"sk-live-01', '23456789","again":"sk-', 'live-0123456789"}'];
    const out: Buffer[] = [];
    for await (const c of Readable.from(chunks.map((c) => Buffer.from(c))).pipe(masker)) out.push(c as Buffer);
    expect(Buffer.concat(out).toString()).toBe('{"key":"PLACEHOLDER","again":"PLACEHOLDER"}');
  });

  it('audit chain: canonical form, sealing and verification without Redis', async () => {
    expect(canonical({ b: '2', a: '1', mac: 'x' })).toBe('[["a","1"],["b","2"]]');
    expect(compareIds('5-10', '5-9')).toBeGreaterThan(0);
    const keys = new AuditKeyRing({ version: '1', key: new Uint8Array(Buffer.from('k'.repeat(64))) });
    const w = new ChainWriter('w1', keys);
    const recs = [0, 1, 2].map((i) => ({
      fields: w.seal({ ts: String(i), action: 'access', outcome: 'granted', secret: 's' }),
    }));
    expect((await verifyEntries(recs, keys, { mode: 'full' })).ok).toBe(true);
    const swapped = [recs[0]!, recs[2]!, recs[1]!];
    expect((await verifyEntries(swapped, keys, { mode: 'full' })).firstBreak?.reason).toMatch(/missing before it/);
    const edited = recs.map((r, i) => (i === 1 ? { fields: { ...r.fields, outcome: 'denied' } } : r));
    expect((await verifyEntries(edited, keys, { mode: 'full' })).firstBreak).toMatchObject({
      at: 'line 2',
      reason: expect.stringMatching(/MAC does not match/),
    });
    // A window: the first record of each writer is taken as given.
    expect((await verifyEntries(recs.slice(1), keys, { mode: 'anchored' })).ok).toBe(true);
    expect((await verifyEntries(recs.slice(1), keys, { mode: 'full' })).ok).toBe(false);
  });

  it('narrowing helpers: fields of unknown values, one-of, required answers', () => {
    expect(fieldOf({ status: 413 }, 'status')).toBe(413);
    expect(fieldOf(null, 'status')).toBeUndefined();
    expect(fieldOf('text', 'length')).toBeUndefined();
    expect(errnoCode(Object.assign(new Error('x'), { code: 'ENOENT' }))).toBe('ENOENT');
    expect(errnoCode(Object.assign(new Error('x'), { code: 1 }))).toBeUndefined();
    expect(isOneOf(['api', 'worker'], 'worker')).toBe(true);
    expect(isOneOf(['api', 'worker'], 'all')).toBe(false);
    expect(required('k', 'key id')).toBe('k');
    expect(() => required(undefined, 'KMS DescribeKey: KeyMetadata.KeyId')).toThrow(/KeyId is missing from the answer/);
    expect(parseControlMessage('{"kind":"cancel","jobId":"a.1"}')).toEqual({ kind: 'cancel', jobId: 'a.1' });
    expect(parseControlMessage('{"kind":"cancel","jobId":7}')).toBeNull();
    expect(parseControlMessage('not json')).toBeNull();
    const create = async (): Promise<Uint8Array> => new Uint8Array(1);
    expect(rotatorOf({ default: { create } })?.create).toBe(create);
    expect(rotatorOf({ create })?.create).toBe(create);
    expect(rotatorOf({ default: () => 1 })).toBeNull();
  });

  it('masked log fields stay an object, even when masking breaks their JSON', () => {
    const mask = new SecretMask();
    mask.add(new Uint8Array(Buffer.from('hunter22')));
    expect(mask.fields({ key: 'hunter22', n: 1 })).toEqual({ key: '***', n: 1 });
    const broken = mask.fields({ a: 'x', b: 'hunter22' });
    expect(typeof broken).toBe('object');
    expect(JSON.stringify(broken)).not.toContain('hunter22');
  });

  it('lint refuses non-null assertions and unexplained casts in src/', async () => {
    const eslint = new ESLint({ cwd: process.cwd() });
    const lint = async (code: string): Promise<string[]> =>
      (await eslint.lintText(code, { filePath: 'src/lint-probe.ts' }))[0]?.messages.map((m) => m.ruleId ?? m.message) ??
      [];
    expect(await lint('export const f = (m: string[]): string => m[0]!;\n')).toContain(
      '@typescript-eslint/no-non-null-assertion',
    );
    expect(await lint('export const f = (v: unknown): string => v as string;\n')).toContain(
      '@typescript-eslint/consistent-type-assertions',
    );
    expect(
      await lint(
        '// eslint-disable-next-line @typescript-eslint/consistent-type-assertions\nexport const f = (v: unknown): string => v as string;\n',
      ),
    ).toContain('fleet/disable-needs-reason');
    expect(
      await lint(
        '// eslint-disable-next-line @typescript-eslint/consistent-type-assertions -- a reason\nexport const f = (v: unknown): string => v as string;\n',
      ),
    ).toEqual([]);
  });
});

describe('the sandbox channel (frames) and the protocol schema', () => {
  it('round-trips messages with byte values outside the JSON, split at any byte, and wipes what held bytes', () => {
    const secret = new Uint8Array(Buffer.from('s3cret-bytes'));
    const frame = encodeFrame({ type: 'secret', reqId: 1, ok: true, value: secret, version: 'v1' });
    expect(frame.bytes.includes(Buffer.from('s3cret-bytes'))).toBe(true);
    expect(frame.bytes.toString('latin1')).toContain('{"$bytes":[0,12]}');
    const two = Buffer.concat([frame.bytes, encodeFrame({ type: 'abort', reason: 'timeout' }).bytes]);
    for (let cut = 0; cut <= two.length; cut++) {
      const d = new FrameDecoder(1024);
      const head = Buffer.from(two.subarray(0, cut));
      const got = [...d.push(head), ...d.push(Buffer.from(two.subarray(cut)))];
      expect(got).toHaveLength(2);
      expect(Buffer.from(fieldOf(got[0], 'value') as Uint8Array).toString()).toBe('s3cret-bytes');
      expect(got[1]).toEqual({ type: 'abort', reason: 'timeout' });
      // The chunk handed in is zeroed once copied: a read buffer keeps no secret bytes.
      expect(head.every((b) => b === 0)).toBe(true);
    }
    frame.wipe();
    expect(frame.bytes.every((b) => b === 0)).toBe(true);
  });

  it('refuses a frame above its cap from the header alone, and anything that is no frame, with ChannelError', () => {
    const header = Buffer.alloc(4);
    header.writeUInt32BE(0xfffffff0, 0);
    const d = new FrameDecoder(1024 * 1024);
    expect(() => d.push(header)).toThrow(/announced 4294967280 bytes, above this channel's limit of 1048576/);
    expect(d.buffered).toBe(0);
    expect(() => d.push(Buffer.from('x'))).toThrow(ChannelError);
    const bad = (hex: string): unknown => {
      try {
        return new FrameDecoder(1024).push(Buffer.from(hex, 'hex'));
      } catch (err) {
        return err;
      }
    };
    expect(bad('00000002ffff')).toBeInstanceOf(ChannelError); // too short for its JSON length
    expect(bad('000000060000ffff7b7d')).toBeInstanceOf(ChannelError); // JSON length past the end
    expect(bad('00000005000000017b')).toBeInstanceOf(ChannelError); // not JSON
    expect(bad('0000000600000002' + Buffer.from('[]').toString('hex'))).toBeInstanceOf(ChannelError); // not an object
    const ref = Buffer.from('{"v":{"$bytes":[0,5]}}');
    const f = Buffer.alloc(8 + ref.length);
    f.writeUInt32BE(4 + ref.length, 0);
    f.writeUInt32BE(ref.length, 4);
    ref.copy(f, 8);
    expect(bad(f.toString('hex'))).toBeInstanceOf(ChannelError); // byte reference out of the frame
  });

  it('fuzzed: 20,000 random and mutated frames end in a message or a ChannelError, never another throw', () => {
    let seed = 42;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const samples = [
      { type: 'log', level: 'info', msg: 'hello', source: 'processor' },
      {
        type: 'done',
        ok: true,
        resultJson: '{"a":1}',
        value: new Uint8Array([1, 2, 3]),
        cpuMs: 1,
        heapUsedBytes: 1,
        peakHeapBytes: 1,
        secretsZeroed: 0,
      },
      { type: 'progress', value: { deep: [[[{}]]] } },
    ];
    let messages = 0;
    let refused = 0;
    let valid = 0;
    for (let i = 0; i < 20_000; i++) {
      const b = Buffer.from(encodeFrame(samples[i % samples.length]!).bytes);
      const n = 1 + Math.floor(rnd() * 4);
      for (let k = 0; k < n; k++) {
        const at = Math.floor(rnd() * b.length);
        b[at] = (b[at] ?? 0) ^ (1 << Math.floor(rnd() * 8));
      }
      const input =
        rnd() < 0.1 ? Buffer.from(Array.from({ length: Math.floor(rnd() * 40) }, () => Math.floor(rnd() * 256))) : b;
      try {
        for (const m of new FrameDecoder(4096).push(input)) {
          messages++;
          if (parseFromSandbox(m).ok) valid++;
        }
      } catch (err) {
        expect(err).toBeInstanceOf(ChannelError);
        refused++;
      }
    }
    expect(messages + refused).toBeGreaterThan(10_000);
    expect(refused).toBeGreaterThan(1000);
    expect(valid).toBeGreaterThan(0);
  });

  it('the schema refuses messages of the wrong shape with the first problem named', () => {
    expect(parseFromSandbox({ type: 'log', level: 'nope', msg: 'x', source: 'processor' })).toMatchObject({
      ok: false,
      problem: expect.stringMatching(/^a "log" message that does not match the protocol at level/),
    });
    expect(parseFromSandbox(null)).toMatchObject({ ok: false, problem: expect.stringMatching(/^a malformed message/) });
    expect(parseFromSandbox({ type: 'secret-request', reqId: 1, name: 'x'.repeat(300) }).ok).toBe(false);
    expect(parseFromSandbox({ type: 'ready', extra: 1 }).ok).toBe(false);
    expect(parseFromSandbox({ type: 'ready' }).ok).toBe(true);
  });

  it('an error a sandbox reports keeps only codes it may claim, cut to size', () => {
    const e = errorFromSandbox({ name: 'X', code: 'SHUTDOWN', message: 'm'.repeat(20_000), retryable: true });
    expect(e.code).toBe('PROCESSOR_FAILED');
    expect(e.message).toMatch(/^\[sandbox reported SHUTDOWN\] m+… \[\d+ characters cut\]$/);
    expect(
      errorFromSandbox({ name: 'SecretScopeError', code: 'SECRET_SCOPE', message: 'no', retryable: false }).code,
    ).toBe('SECRET_SCOPE');
  });
});

describe('the seccomp filter (run by a small classic-BPF interpreter, no kernel needed)', () => {
  /** Runs the program against one system call: returns the action word. */
  function run(prog: Buffer, call: { nr: number; arch?: number; args?: number[] }): number {
    const data = Buffer.alloc(64);
    data.writeUInt32LE(call.nr >>> 0, 0);
    data.writeUInt32LE((call.arch ?? 0xc000003e) >>> 0, 4);
    (call.args ?? []).forEach((a, i) => data.writeUInt32LE(a >>> 0, 16 + 8 * i));
    let acc = 0;
    for (let pc = 0; pc < prog.length / 8;) {
      const code = prog.readUInt16LE(pc * 8);
      const jt = prog.readUInt8(pc * 8 + 2);
      const jf = prog.readUInt8(pc * 8 + 3);
      const k = prog.readUInt32LE(pc * 8 + 4);
      if (code === 0x20) acc = data.readUInt32LE(k);
      else if (code === 0x06) return k;
      else if (code === 0x15) pc += acc === k ? jt : jf;
      else if (code === 0x35) pc += acc >= k ? jt : jf;
      else if (code === 0x45) pc += (acc & k) !== 0 ? jt : jf;
      else throw new Error(`unexpected BPF code ${code}`);
      pc++;
    }
    throw new Error('fell off the end of the program');
  }
  const ALLOW = 0x7fff0000;
  const EPERM = 0x00050001;
  const prog = seccompProgram();

  it('denies each listed call with EPERM, clone3 with ENOSYS, and allows the everyday ones', () => {
    for (const d of deniedSyscalls().filter((x) => /^[a-z_0-9]+$/.test(x.name) && x.name !== 'clone3'))
      expect(run(prog, { nr: d.nr }), d.name).toBe(EPERM);
    expect(run(prog, { nr: 435 })).toBe(0x00050000 | 38);
    for (const [name, nr] of [
      ['read', 0],
      ['write', 1],
      ['openat', 257],
      ['mmap', 9],
      ['futex', 202],
      ['epoll_wait', 232],
      ['exit_group', 231],
    ] as const)
      expect(run(prog, { nr }), name).toBe(ALLOW);
  });

  it('reads clone flags and socket families; refuses the x32 ABI, foreign architectures and unreviewed new calls', () => {
    expect(run(prog, { nr: 56, args: [0x11 /* SIGCHLD */] })).toBe(ALLOW);
    expect(run(prog, { nr: 56, args: [0x10000000 | 0x11] })).toBe(EPERM); // CLONE_NEWUSER
    expect(run(prog, { nr: 56, args: [0x3d0f00 /* pthread_create's flags */] })).toBe(ALLOW);
    for (const family of [1, 2, 10]) expect(run(prog, { nr: 41, args: [family] }), `socket ${family}`).toBe(ALLOW);
    for (const family of [16, 17, 40]) expect(run(prog, { nr: 41, args: [family] }), `socket ${family}`).toBe(EPERM);
    expect(run(prog, { nr: 53, args: [1] })).toBe(ALLOW);
    expect(run(prog, { nr: 53, args: [2] })).toBe(EPERM);
    expect(run(prog, { nr: 0x40000000 + 101 })).toBe(EPERM);
    expect(run(prog, { nr: 0, arch: 0x40000003 /* i386 */ })).toBe(0x80000000);
    expect(run(prog, { nr: 467 /* open_tree_attr */ })).toBe(EPERM);
    expect(run(prog, { nr: 457 /* statmount */ })).toBe(EPERM);
    expect(run(prog, { nr: 452 /* fchmodat2 */ })).toBe(ALLOW);
    expect(run(prog, { nr: 454 /* futex_wake */ })).toBe(ALLOW);
  });
});

describe('transport: loopback, Redis URLs, TLS failures', () => {
  it.each([
    ['127.0.0.1', true],
    ['127.255.0.9', true],
    ['localhost', true],
    ['LOCALHOST.', true],
    ['::1', true],
    ['[::1]', true],
    ['0:0:0:0:0:0:0:1', true],
    ['::ffff:127.0.0.1', true],
    ['0.0.0.0', false],
    ['::', false],
    ['10.0.0.5', false],
    ['128.0.0.1', false],
    ['127.0.0.1.nip.io', false],
    ['127.evil.example', false],
    ['127.1', false],
    ['localhost.example.com', false],
    ['redis', false],
    ['', false],
  ])('isLoopbackHost(%j) is %s', (host, loopback) => {
    expect(isLoopbackHost(host)).toBe(loopback);
  });

  it('reads the nodes of every Redis URL form, and which of them speak TLS', () => {
    expect(redisUrlNodes('redis://u:p%40ss@10.0.0.5:6380/2?family=6')).toEqual([{ host: '10.0.0.5', port: 6380 }]);
    expect(redisUrlNodes('rediss://redis.internal')).toEqual([{ host: 'redis.internal', port: 6379 }]);
    expect(redisUrlNodes('redis://[::1]:7000')).toEqual([{ host: '::1', port: 7000 }]);
    expect(redisUrlNodes('rediss-cluster://a:pw@h1:7000,h2:7001,[::1]')).toEqual([
      { host: 'h1', port: 7000 },
      { host: 'h2', port: 7001 },
      { host: '::1', port: 6379 },
    ]);
    expect(['redis://a', 'rediss://a', 'redis-cluster://a:1', 'rediss-cluster://a:1'].map(isRedisTlsUrl)).toEqual([
      false,
      true,
      false,
      true,
    ]);
  });

  // Each URL once read two ways: a first-'@' regex saw 127.0.0.1 or ::1, ioredis (WHATWG URL) dials the remote host.
  it.each([
    ['redis://redis.example.net:6379#@127.0.0.1', 'has a fragment'],
    ['redis://redis.example.net:6379/?x=@127.0.0.1', "has an '@' after the host"],
    ['redis://redis.example.net:6379/@[::1]', "has an '@' after the host"],
    ['rediss-cluster://h1:7000,h2:7001/?a=@127.0.0.1', "has an '@' after the host"],
    ['redis://u:p@ss@redis.example.net:6379', "has more than one '@' before the host"],
    ['redis://redis.example.net:6379,127.0.0.1', 'cannot be parsed'],
    ['redis.example.net:6379', 'is not a Redis URL the fleet reads'],
    ['http://127.0.0.1:6379', 'is not a Redis URL the fleet reads'],
  ])('refuses the Redis URL %s: it %s', (url, reason) => {
    expect(redisUrlProblem(url)?.reason).toContain(reason);
    expect(redisUrlProblem(url)?.fix).toMatch(/\S/);
  });

  it.each([
    ['redis://u:p%40ss@10.0.0.5:6380/2?family=6', [{ host: '10.0.0.5', port: 6380 }]],
    ['redis://:p%23w@127.0.0.1:6379', [{ host: '127.0.0.1', port: 6379 }]],
    ['rediss://redis.internal', [{ host: 'redis.internal', port: 6379 }]],
    ['redis://[::1]:7000', [{ host: '::1', port: 7000 }]],
    [
      'rediss-cluster://a:p%40w@h1:7000,h2:7001,[::1]/?x=1',
      [
        { host: 'h1', port: 7000 },
        { host: 'h2', port: 7001 },
        { host: '::1', port: 6379 },
      ],
    ],
  ])('accepts %s and reads the nodes ioredis connects to', (url, nodes) => {
    expect(redisUrlProblem(url)).toBeNull();
    expect(redisUrlNodes(url)).toEqual(nodes);
    if (!isClusterUrl(url)) {
      const r = new Redis(url, { lazyConnect: true });
      expect([{ host: r.options.host, port: r.options.port }]).toEqual(nodes);
      r.disconnect();
    }
  });

  it('names what a failed handshake means from its code, through causes; other errors are not TLS', () => {
    const err = (code: string, extra: Record<string, unknown> = {}): Error =>
      Object.assign(new Error(`${code} happened\n`), { code, ...extra });
    expect(tlsFailureOf(err('SELF_SIGNED_CERT_IN_CHAIN'))).toEqual({
      kind: 'untrusted',
      reason: 'SELF_SIGNED_CERT_IN_CHAIN happened (SELF_SIGNED_CERT_IN_CHAIN)',
    });
    expect(tlsFailureOf(new TypeError('fetch failed', { cause: err('UNABLE_TO_VERIFY_LEAF_SIGNATURE') }))?.kind).toBe(
      'untrusted',
    );
    expect(
      tlsFailureOf(
        Object.assign(new Error('Failed to refresh slots cache.'), { lastNodeError: err('CERT_HAS_EXPIRED') }),
      )?.kind,
    ).toBe('expired');
    expect(tlsFailureOf(err('ERR_TLS_CERT_ALTNAME_INVALID'))?.kind).toBe('name');
    expect(
      tlsFailureOf(err('ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', { reason: 'tlsv13 alert certificate required' })),
    ).toEqual({
      kind: 'client-certificate',
      reason: 'tlsv13 alert certificate required (ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED)',
    });
    expect(tlsFailureOf(err('ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE'))?.kind).toBe('client-certificate-refused');
    expect(tlsFailureOf(err('ERR_SSL_WRONG_VERSION_NUMBER'))?.kind).toBe('not-tls');
    expect(tlsFailureOf(err('ERR_SSL_SOMETHING_NEW'))?.kind).toBe('other');
    for (const code of ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND'])
      expect(tlsFailureOf(err(code))).toBeNull();
    expect(tlsFailureOf('a string')).toBeNull();
  });
});
