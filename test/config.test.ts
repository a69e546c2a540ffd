import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { loadConfig } from '../src/config/load.js';
import { resolveConfig } from '../src/config/resolve.js';
import { ConfigError } from '../src/errors.js';
import { FIXTURES, fixtureType } from './helpers/fleet.js';

const resolve = (input: unknown) => resolveConfig(input, { baseDir: FIXTURES });
const refusal = (input: unknown): string => {
  try {
    resolve(input);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('config was accepted');
};

describe('config', () => {
  it('fills every default and freezes the result', () => {
    const cfg = resolve({ jobTypes: [{ name: 'a', processor: './ok.mjs' }] });
    const a = cfg.jobTypes.get('a')!;
    expect(a).toMatchObject({
      isolation: 'job',
      sensitivity: 'routine',
      timeoutMs: 300_000,
      concurrency: 4,
      warmSandboxes: 4,
      attempts: 3,
      maxOldGenerationSizeMb: 128,
      recycleHeapUsedMb: 96,
    });
    expect(a.processorPath).toBe(path.join(FIXTURES, 'ok.mjs'));
    expect(cfg.redis.prefix).toBe('fleet');
    expect(cfg.api.port).toBe(8080);
    expect(Object.isFrozen(cfg)).toBe(true);
    expect(Object.isFrozen(a)).toBe(true);
    expect(() => {
      (a as { timeoutMs: number }).timeoutMs = 1;
    }).toThrow();
  });

  it('refuses critical work in a reused sandbox, naming the setting and the fix', () => {
    const msg = refusal({
      jobTypes: [{ name: 'pay', processor: './ok.mjs', sensitivity: 'critical', isolation: 'pool' }],
    });
    expect(msg).toContain('jobTypes.pay.isolation');
    expect(msg).toContain('isolation: "job"');
  });

  it('refuses a data key a job could hold, or one whose rotation could retire a version still in use for sealing', () => {
    const msg = refusal({
      secrets: {
        dataKey: { refreshSeconds: 30 },
        items: {
          'fleet-data-key': {
            rotation: { schedule: 'daily', rotator: { type: 'random', bytes: 16 }, graceSeconds: 59 },
          },
        },
      },
      jobTypes: [{ name: 'pay', processor: './ok.mjs', encryptData: true, secrets: ['fleet-data-key'] }],
    });
    expect(msg).toMatch(/job type "pay" declares "fleet-data-key", the key sealing job data at rest.*Fix: remove it/);
    expect(msg).toMatch(/rotation\.rotator\.bytes is 16; the data key needs at least 32\. Fix: set bytes: 32/);
    expect(msg).toMatch(
      /graceSeconds \(59\) is below twice secrets\.dataKey\.refreshSeconds \(30\).*Fix: raise graceSeconds to ≥ 60/,
    );
    const ok = resolve({ jobTypes: [{ name: 'pay', processor: './ok.mjs', encryptData: true }] });
    expect(ok.jobTypes.get('pay')?.encryptData).toBe(true);
    expect(ok.secrets.dataKey).toEqual({ name: 'fleet-data-key', refreshSeconds: 60 });
    expect(ok.secretProviders.get('fleet-data-key')).toBe('local');
  });

  it('refuses critical work with a timeout above 120 s', () => {
    const msg = refusal({
      jobTypes: [{ name: 'pay', processor: './ok.mjs', sensitivity: 'critical', timeoutMs: 120_001 }],
    });
    expect(msg).toContain('jobTypes.pay.timeoutMs is 120001');
    expect(msg).toContain('≤ 120000');
  });

  it('accepts critical work at exactly 120 s with per-job isolation', () => {
    expect(() =>
      resolve({ jobTypes: [{ name: 'pay', processor: './ok.mjs', sensitivity: 'critical', timeoutMs: 120_000 }] }),
    ).not.toThrow();
  });

  it('reports every problem at once: unknown keys, bad names, missing processors, grace ≥ timeout', () => {
    const msg = refusal({ jobTypes: [{ name: 'Bad Name', processor: './ok.mjs', colour: 'red' }] });
    expect(msg).toContain('jobTypes.0.name');
    expect(msg).toContain('colour');
    const msg2 = refusal({ jobTypes: [{ name: 'a', processor: './missing.mjs', timeoutMs: 100, abortGraceMs: 100 }] });
    expect(msg2).toContain('missing.mjs does not exist');
    expect(msg2).toContain('abortGraceMs (100) must be below timeoutMs (100)');
  });

  it('secret modes: inject by default with a binding, deliver without or when asked; inject needs a binding and egress to its hosts', () => {
    const items = { 'stripe-key': { binding: { hosts: ['api.stripe.com'] } }, 'signing-key': {} };
    const c = resolve({
      secrets: { items },
      jobTypes: [
        fixtureType('charge', 'ok.mjs', { secrets: ['stripe-key', 'signing-key'], egress: ['api.stripe.com'] }),
        fixtureType('legacy', 'ok.mjs', {
          secrets: [{ name: 'stripe-key', mode: 'deliver' }],
          egress: ['api.stripe.com'],
        }),
      ],
    });
    expect(Object.fromEntries(c.jobTypes.get('charge')!.secretModes)).toEqual({
      'stripe-key': 'inject',
      'signing-key': 'deliver',
    });
    expect(c.jobTypes.get('legacy')!.secrets).toEqual(['stripe-key']);
    expect(c.secrets.items['stripe-key']!.binding).toEqual({
      hosts: ['api.stripe.com'],
      header: 'authorization',
      format: 'Bearer {value}',
      body: false,
    });
    const msg = refusal({
      secrets: { items },
      jobTypes: [
        fixtureType('a', 'ok.mjs', {
          secrets: [{ name: 'signing-key', mode: 'inject' }, 'stripe-key'],
          egress: ['api.example.com'],
        }),
      ],
    });
    expect(msg).toContain('"signing-key" is to be injected but has no binding');
    expect(msg).toContain(
      'jobTypes.a.egress does not allow api.stripe.com, where its injected secret "stripe-key" is bound',
    );
    expect(
      refusal({
        secrets: { items: { k: { binding: { hosts: ['x.example.com'], format: 'Bearer' } } } },
        jobTypes: [fixtureType('a', 'ok.mjs')],
      }),
    ).toContain('secrets.items.k.binding.format: must contain {value}');
  });

  it('refuses producers allowed a job type that does not exist', () => {
    const msg = refusal({
      jobTypes: [fixtureType('a', 'ok.mjs')],
      producers: [{ name: 'svc', tokenSha256: 'a'.repeat(64), jobTypes: ['b'] }],
    });
    expect(msg).toContain('producers.svc.jobTypes names "b"');
  });

  it("refuses an HTTP producer named like one of the fleet's own producers, or two producers sharing a name: a job's owner is a name", () => {
    const producer = (name: string, hash: string | string[]) => ({ name, tokenSha256: hash, jobTypes: ['a'] });
    // The reviewer's config (issue 27): "client" is the TypeScript Producer's default owner name,
    // and two tokens named "billing" would read each other's sealed jobs in plaintext.
    const msg = refusal({
      jobTypes: [fixtureType('a', 'ok.mjs', { encryptData: true })],
      producers: [
        producer('client', 'a'.repeat(64)),
        producer('billing', 'b'.repeat(64)),
        producer('billing', 'c'.repeat(64)),
      ],
    });
    expect(msg).toContain(
      'producers.client: "client" is the owner name the fleet\'s own producers record (reserved: client, cli, api, bull-board)',
    );
    expect(msg).toContain('Fix: give this producer another name.');
    expect(msg).toContain('producers.billing: two producers have this name');
    expect(msg).toContain("list the old and new hashes in one producer's tokenSha256 (an array)");
    for (const name of ['cli', 'api', 'bull-board'])
      expect(
        refusal({ jobTypes: [fixtureType('a', 'ok.mjs')], producers: [producer(name, 'a'.repeat(64))] }),
      ).toContain(`producers.${name}: "${name}" is the owner name the fleet's own producers record`);
    // A token rotated in place: one producer, two hashes; a hash in two producers is still refused.
    const rotated = resolve({
      jobTypes: [fixtureType('a', 'ok.mjs')],
      producers: [producer('billing', ['b'.repeat(64), 'c'.repeat(64)])],
    });
    expect(rotated.producers[0]?.tokenSha256).toEqual(['b'.repeat(64), 'c'.repeat(64)]);
    expect(
      refusal({
        jobTypes: [fixtureType('a', 'ok.mjs')],
        producers: [producer('billing', ['b'.repeat(64), 'c'.repeat(64)]), producer('orders', 'c'.repeat(64))],
      }),
    ).toContain('producers.orders: the same token is given to two producers. Fix: one token per service.');
  });

  it.each([
    ['redis://redis.example.net:6379#@127.0.0.1', 'has a fragment (#…)', "remove it; write a '#' in a password as %23"],
    ['redis://redis.example.net:6379/?x=@127.0.0.1', "has an '@' after the host", 'remove it, or write it as %40'],
    ['redis://redis.example.net:6379/@[::1]', "has an '@' after the host", 'remove it, or write it as %40'],
    [
      'redis://u:p@ss@redis.example.net',
      "has more than one '@' before the host",
      "write an '@' in the user name or password as %40",
    ],
  ])('refuses the Redis URL %s at load, naming the setting and the fix', (url, reason, fix) => {
    const msg = refusal({ redis: { url }, jobTypes: [fixtureType('a', 'ok.mjs')] });
    expect(msg).toContain(`redis.url (or REDIS_URL) ${reason}`);
    expect(msg).toContain(`Fix: ${fix}`);
    expect(msg).not.toContain('redis.example.net');
  });

  it('exports the payload schema as JSON Schema', () => {
    const cfg = resolve({
      jobTypes: [{ name: 'a', processor: './ok.mjs', payloadSchema: z.object({ n: z.number().int() }) }],
    });
    const js = cfg.jobTypes.get('a')!.payloadJsonSchema;
    expect(js).toMatchObject({ type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] });
  });

  it('loads a JSON config whose payload schema is JSON Schema', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-cfg-'));
    writeFileSync(path.join(dir, 'p.mjs'), 'export default async () => 1;');
    writeFileSync(
      path.join(dir, 'fleet.config.json'),
      JSON.stringify({
        jobTypes: [
          {
            name: 'j',
            processor: './p.mjs',
            payloadSchema: { type: 'object', properties: { n: { type: 'number' } }, required: ['n'] },
          },
        ],
      }),
    );
    const cfg = await loadConfig({ cwd: dir });
    const t = cfg.jobTypes.get('j')!;
    expect(t.processorPath).toBe(path.join(dir, 'p.mjs'));
    expect(t.payload.safeParse({ n: 1 }).success).toBe(true);
    expect(t.payload.safeParse({ n: 'x' }).success).toBe(false);
  });

  it('loads the TypeScript demo config', async () => {
    const cfg = await loadConfig({ cwd: path.join(FIXTURES, '..', '..') });
    expect([...cfg.jobTypes.keys()]).toEqual(expect.arrayContaining(['echo', 'hash']));
  });

  it('says where it looked and how to fix a missing config', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-none-'));
    await expect(loadConfig({ cwd: dir })).rejects.toThrow(/no fleet config found in .*Fix: create fleet.config.ts/);
    await expect(loadConfig({ path: 'nope.json', cwd: dir })).rejects.toThrow(
      /nope.json does not exist \(from --config\)/,
    );
  });
});
