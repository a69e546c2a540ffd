import { afterAll, beforeAll, expect, it } from 'vitest';
import type { LeaseRequest, SecretProvider } from '../../src/secrets/provider.js';

/**
 * The secrets test suite every provider passes: the same behaviour whatever the backend. Call
 * {@link providerContract} inside a `describe` of the provider's own test file (which starts its
 * server); it registers the tests there.
 */

/** The job type the suite's leases are made for. */
export const CONTRACT_JOB_TYPE = 'contract';

/** Secret names the suite uses, one set per test so the tests share nothing. */
const N = {
  read: 'contract-read',
  fresh: 'contract-fresh',
  scoped: 'contract-scoped',
  released: 'contract-released',
  missing: 'contract-missing',
  versions: 'contract-versions',
  pending: 'contract-pending',
  retire: 'contract-retire',
  failed: 'contract-failed',
  listA: 'contract-list-a',
  listB: 'contract-list-b',
  removed: 'contract-removed',
} as const;

/** A secret no contract lease declares; it exists, so a refusal is the lease's scope and nothing else. */
export const CONTRACT_UNDECLARED = 'contract-undeclared';

/**
 * Every name the contract job type may read: backends whose own policies enforce a type's scope
 * (Vault) grant exactly these to {@link CONTRACT_JOB_TYPE}, and not {@link CONTRACT_UNDECLARED}.
 */
export const CONTRACT_SECRETS: readonly string[] = Object.values(N);

export interface ContractSubject {
  provider: SecretProvider;
  /**
   * Puts a value where the provider reads it, from outside the provider: for read-only providers
   * (exec), whose values are set by whatever they front. @defaultValue `provider.write`
   */
  seed?(name: string, value: Uint8Array): Promise<void>;
  /** Cleans up what `open` made, after `provider.close()`. */
  release?(): Promise<void>;
}

export interface ContractOptions {
  /** Opens the provider under test (once for the suite; each test uses its own secret names). */
  open(): Promise<ContractSubject>;
  /**
   * A provider that only reads (exec): the write, pending, promote, retire and remove tests are
   * not registered, and values are put in place with `seed`. @defaultValue false
   */
  readOnly?: boolean;
  /**
   * `retire` cannot delete one version in this backend: a retired version stays readable by its
   * id until the backend drops it (Secrets Manager: its labels are taken off, the service deletes
   * deprecated versions on its own schedule). Leases still never see it. @defaultValue false
   */
  retiredVersionsStayReadable?: boolean;
}

const bytes = (s: string): Uint8Array => new Uint8Array(Buffer.from(s));
const text = (v: Uint8Array): string => Buffer.from(v).toString();
const request = (names: string[], jobId = `${CONTRACT_JOB_TYPE}.${names[0] ?? 'none'}`): LeaseRequest => ({
  jobId,
  jobType: CONTRACT_JOB_TYPE,
  names,
  ttlMs: 10_000,
});

/** Registers the contract tests in the enclosing `describe`. */
export function providerContract(options: ContractOptions): void {
  let subject: ContractSubject;
  let p: SecretProvider;
  const seed = async (name: string, value: string): Promise<void> => {
    if (subject.seed) await subject.seed(name, bytes(value));
    else await p.write(name, bytes(value));
  };

  beforeAll(async () => {
    subject = await options.open();
    p = subject.provider;
    await seed(CONTRACT_UNDECLARED, 'contract-undeclared-value-0');
  }, 60_000);
  afterAll(async () => {
    await p?.close();
    await subject?.release?.();
  });

  it('a lease reads the current value and its version', async () => {
    await seed(N.read, 'contract-read-value-1');
    const lease = await p.lease(request([N.read]));
    try {
      const v = await lease.read(N.read);
      expect(text(v.value)).toBe('contract-read-value-1');
      expect(v.version).toMatch(/\S/);
      // The provider's own read of the current version agrees with the lease.
      const cur = await p.readCurrent(N.read);
      expect([text(cur.value), cur.version]).toEqual(['contract-read-value-1', v.version]);
    } finally {
      await lease.release();
    }
  });

  it('values come back as fresh Uint8Arrays in memory of their own, never shared between reads', async () => {
    await seed(N.fresh, 'contract-fresh-value-12345');
    const lease = await p.lease(request([N.fresh]));
    try {
      const a = (await lease.read(N.fresh)).value;
      const b = (await lease.read(N.fresh)).value;
      const c = (await p.readCurrent(N.fresh)).value;
      for (const v of [a, b, c]) {
        expect(v).toBeInstanceOf(Uint8Array);
        // Not a view into Node's shared Buffer pool: zeroing it cannot touch anything else.
        expect([v.byteOffset, v.buffer.byteLength]).toEqual([0, v.byteLength]);
      }
      expect(new Set([a.buffer, b.buffer, c.buffer]).size).toBe(3);
      a.fill(0);
      expect(text(b)).toBe('contract-fresh-value-12345');
      expect(text((await lease.read(N.fresh)).value)).toBe('contract-fresh-value-12345');
    } finally {
      await lease.release();
    }
  });

  it('a lease grants only the names it was made for', async () => {
    await seed(N.scoped, 'contract-scoped-value-1');
    const lease = await p.lease(request([N.scoped]));
    try {
      await expect(lease.read(CONTRACT_UNDECLARED)).rejects.toMatchObject({ code: 'SECRET_PERMISSION_DENIED' });
      expect(text((await lease.read(N.scoped)).value)).toBe('contract-scoped-value-1');
    } finally {
      await lease.release();
    }
  });

  it('release() zero-fills the values the lease handed out and ends it: a later read is refused', async () => {
    await seed(N.released, 'contract-released-value-1');
    const lease = await p.lease(request([N.released]));
    const v = await lease.read(N.released);
    expect(text(v.value)).toBe('contract-released-value-1');
    await lease.release();
    expect(v.value.every((b) => b === 0)).toBe(true);
    await expect(lease.read(N.released)).rejects.toMatchObject({ code: 'SECRET_AUTH_EXPIRED' });
  });

  it('a missing secret is SECRET_NOT_FOUND, naming it', async () => {
    const lease = await p.lease(request([N.missing]));
    try {
      await expect(lease.read(N.missing)).rejects.toMatchObject({
        code: 'SECRET_NOT_FOUND',
        message: expect.stringContaining(N.missing),
      });
    } finally {
      await lease.release();
    }
    await expect(p.readCurrent(N.missing)).rejects.toMatchObject({
      code: 'SECRET_NOT_FOUND',
      message: expect.stringContaining(N.missing),
    });
  });

  if (options.readOnly) return;

  /** A retired version is gone, or (where the backend cannot delete one version) only readable by its id. */
  const expectRetired = async (name: string, version: string, value: string): Promise<void> => {
    if (options.retiredVersionsStayReadable) expect(text((await p.readVersion(name, version)).value)).toBe(value);
    else await expect(p.readVersion(name, version)).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND' });
  };

  it('write makes a new current version; the previous one stays readable by its version', async () => {
    const v1 = await p.write(N.versions, bytes('contract-versions-value-1'));
    const v2 = await p.write(N.versions, bytes('contract-versions-value-2'));
    expect(v2.version).not.toBe(v1.version);
    const cur = await p.readCurrent(N.versions);
    expect([text(cur.value), cur.version]).toEqual(['contract-versions-value-2', v2.version]);
    const prev = await p.readVersion(N.versions, v1.version);
    expect([text(prev.value), prev.version]).toEqual(['contract-versions-value-1', v1.version]);
    expect((await p.list()).find((m) => m.name === N.versions)?.version).toBe(v2.version);
  });

  it('a pending version is not seen by leases until promote; then the previous stays readable', async () => {
    const v1 = await p.write(N.pending, bytes('contract-pending-value-1'));
    const pending = await p.writePending(N.pending, bytes('contract-pending-value-2'));
    const before = await p.lease(request([N.pending]));
    try {
      expect(text((await before.read(N.pending)).value)).toBe('contract-pending-value-1');
    } finally {
      await before.release();
    }
    expect(text((await p.readVersion(N.pending, pending.version)).value)).toBe('contract-pending-value-2');
    expect((await p.list()).find((m) => m.name === N.pending)?.version).toBe(v1.version);

    const promoted = await p.promote(N.pending, pending.version);
    const after = await p.lease(request([N.pending]));
    try {
      const v = await after.read(N.pending);
      expect([text(v.value), v.version]).toEqual(['contract-pending-value-2', promoted.version]);
    } finally {
      await after.release();
    }
    expect((await p.list()).find((m) => m.name === N.pending)?.version).toBe(promoted.version);
    // The grace window: the previous version is still readable by version.
    expect(text((await p.readVersion(N.pending, v1.version)).value)).toBe('contract-pending-value-1');
  });

  it('retire drops a previous version, and never the current one', async () => {
    const v1 = await p.write(N.retire, bytes('contract-retire-value-1'));
    const pending = await p.writePending(N.retire, bytes('contract-retire-value-2'));
    const promoted = await p.promote(N.retire, pending.version);
    await p.retire(N.retire, v1.version);
    await expectRetired(N.retire, v1.version, 'contract-retire-value-1');
    await p.retire(N.retire, promoted.version);
    const cur = await p.readCurrent(N.retire);
    expect([text(cur.value), cur.version]).toEqual(['contract-retire-value-2', promoted.version]);
  });

  it('retiring a pending version that failed its test leaves the current one in place', async () => {
    const v1 = await p.write(N.failed, bytes('contract-failed-value-1'));
    const pending = await p.writePending(N.failed, bytes('contract-failed-value-2'));
    await p.retire(N.failed, pending.version);
    await expectRetired(N.failed, pending.version, 'contract-failed-value-2');
    const cur = await p.readCurrent(N.failed);
    expect([text(cur.value), cur.version]).toEqual(['contract-failed-value-1', v1.version]);
  });

  it('list shows each secret with its current version and when it changed', async () => {
    const started = Date.now();
    const a = await p.write(N.listA, bytes('contract-list-a-value'));
    const b = await p.write(N.listB, bytes('contract-list-b-value'));
    const listed = await p.list();
    for (const [name, { version }] of [
      [N.listA, a],
      [N.listB, b],
    ] as const) {
      const m = listed.find((x) => x.name === name);
      expect(m?.version).toBe(version);
      // Some backends keep whole seconds.
      expect(m?.updatedAt).toBeGreaterThanOrEqual(Math.floor(started / 1000) * 1000);
      expect(m?.updatedAt).toBeLessThanOrEqual(Date.now() + 1000);
    }
  });

  it('remove deletes the secret: leases and list no longer see it', async () => {
    await p.write(N.removed, bytes('contract-removed-value'));
    await p.remove(N.removed);
    const lease = await p.lease(request([N.removed]));
    try {
      await expect(lease.read(N.removed)).rejects.toMatchObject({
        code: 'SECRET_NOT_FOUND',
        message: expect.stringContaining(N.removed),
      });
    } finally {
      await lease.release();
    }
    expect((await p.list()).map((m) => m.name)).not.toContain(N.removed);
  });
}
