/**
 * Job data at rest, the pure part: the envelope (AES-256-GCM bound to type, id, owner and field)
 * and the data key ring over a local store (files in a temp dir; no servers).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FleetError } from '../src/errors.js';
import { DataKeyRing } from '../src/secrets/data-key.js';
import {
  deriveDataKey,
  envelopeVersion,
  openText,
  openValue,
  sealText,
  sealValue,
  sealedEnvelope,
  type SealContext,
} from '../src/secrets/job-data-seal.js';
import type { SecretProvider } from '../src/secrets/provider.js';
import { localStore } from './helpers/fleet.js';

const CTX: SealContext = {
  jobType: 'pay',
  jobId: 'pay.0123456789abcdef0123456789abcdef',
  owner: 'billing',
  field: 'payload',
};
const KEY = deriveDataKey('1', new Uint8Array(Buffer.from('a'.repeat(64))));
const PAYLOAD = { customerId: 'cust-4242-plaintext', amountCents: 1999 };

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return err instanceof FleetError ? err.code : `not a FleetError: ${String(err)}`;
  }
  return 'no error';
}

describe('job data envelope', () => {
  it('round-trips a JSON value, and the stored form holds none of the plaintext', () => {
    const stored = sealValue(KEY, CTX, PAYLOAD);
    expect(JSON.stringify(stored)).not.toContain('cust-4242');
    expect(JSON.stringify(stored)).not.toContain('1999');
    expect(stored.$sealed).toMatch(/^fleet:v1:1:[A-Za-z0-9_-]+$/);
    expect(envelopeVersion(stored.$sealed)).toBe('1');
    expect(openValue(KEY, CTX, stored)).toEqual(PAYLOAD);
    // A fresh nonce each time: equal payloads do not give equal envelopes.
    expect(sealValue(KEY, CTX, PAYLOAD).$sealed).not.toBe(stored.$sealed);
  });

  it('refuses an envelope moved to another job, type, owner or field with JOB_DATA_TAMPERED', () => {
    const stored = sealValue(KEY, CTX, PAYLOAD);
    expect(codeOf(() => openValue(KEY, { ...CTX, jobId: 'pay.ffffffffffffffffffffffffffffffff' }, stored))).toBe(
      'JOB_DATA_TAMPERED',
    );
    expect(codeOf(() => openValue(KEY, { ...CTX, jobType: 'refund' }, stored))).toBe('JOB_DATA_TAMPERED');
    expect(codeOf(() => openValue(KEY, { ...CTX, owner: 'intruder' }, stored))).toBe('JOB_DATA_TAMPERED');
    expect(codeOf(() => openValue(KEY, { ...CTX, field: 'result' }, stored))).toBe('JOB_DATA_TAMPERED');
  });

  it('refuses an edited ciphertext or an edited key version with JOB_DATA_TAMPERED', () => {
    const env = sealText(KEY, CTX, 'secret text');
    const body = env.slice('fleet:v1:1:'.length);
    const raw = Buffer.from(body, 'base64url');
    raw[20] = (raw[20] ?? 0) ^ 1;
    expect(codeOf(() => openText(KEY, CTX, `fleet:v1:1:${raw.toString('base64url')}`))).toBe('JOB_DATA_TAMPERED');
    // Another version's key over the same bytes (the version is authenticated too).
    const other = deriveDataKey('2', new Uint8Array(Buffer.from('a'.repeat(64))));
    expect(codeOf(() => openText(other, CTX, `fleet:v1:2:${body}`))).toBe('JOB_DATA_TAMPERED');
  });

  it('refuses plaintext where a sealed value belongs with JOB_DATA_NOT_SEALED, naming the fix', () => {
    expect(codeOf(() => openValue(KEY, CTX, PAYLOAD))).toBe('JOB_DATA_NOT_SEALED');
    expect(codeOf(() => openValue(KEY, CTX, { $sealed: 'hello' }))).toBe('JOB_DATA_NOT_SEALED');
    expect(codeOf(() => openValue(KEY, CTX, { $sealed: sealText(KEY, CTX, '1'), extra: 1 }))).toBe(
      'JOB_DATA_NOT_SEALED',
    );
    expect(() => openValue(KEY, CTX, PAYLOAD)).toThrow(/HTTP API \(POST \/v1\/jobs\/pay\) or the TypeScript producer/);
    expect(sealedEnvelope('fleet:v1:1:abc')).toBeNull();
  });

  it('derives keys only from values of at least 32 bytes', () => {
    expect(() => deriveDataKey('1', new Uint8Array(31))).toThrow(/at least 32/);
    expect(deriveDataKey('7', new Uint8Array(32)).key).toHaveLength(32);
  });
});

describe('data key ring over a store', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  /** A local store whose reads are counted. */
  function countedStore(): { store: SecretProvider; reads: () => number } {
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-datakey-'));
    dirs.push(dir);
    const store = localStore(dir);
    let reads = 0;
    const readCurrent = store.readCurrent.bind(store);
    const readVersion = store.readVersion.bind(store);
    store.readCurrent = (name) => (reads++, readCurrent(name));
    store.readVersion = (name, v) => (reads++, readVersion(name, v));
    return { store, reads: () => reads };
  }

  it('creates the key on first use, then seals and opens 1000 values without another store read', async () => {
    const { store, reads } = countedStore();
    const ring = new DataKeyRing({ provider: store, name: 'fleet-data-key', refreshMs: 60_000, create: true });
    await ring.current();
    const afterCreate = reads();
    for (let i = 0; i < 1000; i++) {
      const ctx = { ...CTX, jobId: `pay.${String(i).padStart(32, '0')}` };
      expect(await ring.open(ctx, await ring.seal(ctx, { i }))).toEqual({ i });
    }
    expect((await store.list()).map((m) => m.name)).toEqual(['fleet-data-key']);
    expect(reads()).toBe(afterCreate);
    ring.discard();
  });

  it('seals under a rotated version after refreshMs, still opens the old one, and names a retired one DATA_KEY_RETIRED', async () => {
    const { store } = countedStore();
    let now = 0;
    const ring = new DataKeyRing({
      provider: store,
      name: 'fleet-data-key',
      refreshMs: 1000,
      create: true,
      now: () => now,
    });
    const old = await ring.seal(CTX, PAYLOAD);
    expect(envelopeVersion(old.$sealed)).toBe('1');
    await store.write('fleet-data-key', new Uint8Array(Buffer.from('b'.repeat(64))));
    expect(envelopeVersion((await ring.seal(CTX, 1)).$sealed)).toBe('1');
    now += 1000;
    const fresh = await ring.seal(CTX, PAYLOAD);
    expect(envelopeVersion(fresh.$sealed)).toBe('2');
    // A ring that never saw version 1 loads it from the store to open it.
    const other = new DataKeyRing({ provider: store, name: 'fleet-data-key', refreshMs: 1000, create: false });
    expect(await other.open(CTX, old)).toEqual(PAYLOAD);
    await store.retire('fleet-data-key', '1');
    const third = new DataKeyRing({ provider: store, name: 'fleet-data-key', refreshMs: 1000, create: false });
    await expect(third.open(CTX, old)).rejects.toMatchObject({ code: 'DATA_KEY_RETIRED', retryable: false });
    expect(await third.open(CTX, fresh)).toEqual(PAYLOAD);
    for (const r of [ring, other, third]) r.discard();
  });

  it('without a key and without the right to create one: DATA_KEY_UNAVAILABLE naming the fix', async () => {
    const { store } = countedStore();
    const ring = new DataKeyRing({ provider: store, name: 'fleet-data-key', refreshMs: 1000, create: false });
    await expect(ring.seal(CTX, 1)).rejects.toMatchObject({ code: 'DATA_KEY_UNAVAILABLE' });
    await expect(ring.seal(CTX, 1)).rejects.toThrow(/secrets\.dataKey/);
  });

  it('a seal or open still waiting for its key when discard() runs is refused with DATA_KEY_UNAVAILABLE, never sealed under the zero-filled key', async () => {
    const { store } = countedStore();
    const ring = new DataKeyRing({ provider: store, name: 'fleet-data-key', refreshMs: 60_000, create: true });
    const sealed = await ring.seal(CTX, PAYLOAD); // the current version is now held
    const line = await ring.sealText(CTX, 'an earlier log line');
    // In flight: current()/version() resolved from what is held, the continuation not run yet.
    const pending = [
      ring.seal(CTX, { card: '4111-1111-1111-1111' }),
      ring.sealText(CTX, 'a log line'),
      ring.open(CTX, sealed),
    ];
    ring.discard(); // Producer.close() or a supervisor's stop, in the same turn
    const outcomes = await Promise.allSettled(pending);
    for (const o of outcomes) {
      expect(o.status).toBe('rejected');
      expect((o as PromiseRejectedResult).reason).toMatchObject({
        code: 'DATA_KEY_UNAVAILABLE',
        message: expect.stringContaining('was discarded'),
      });
    }
    // And after it: the ring loads no key again (nothing would zero-fill it).
    await expect(ring.seal(CTX, PAYLOAD)).rejects.toMatchObject({ code: 'DATA_KEY_UNAVAILABLE' });
    await expect(ring.openText(CTX, line)).rejects.toMatchObject({ code: 'DATA_KEY_UNAVAILABLE' });
  });
});
