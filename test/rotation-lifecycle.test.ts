/**
 * The rotation scheduler's lifecycle: one start per instance, a failed start that closes what it
 * opened, and a stop() that waits for a retirement already claimed instead of losing it.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { FleetEventBus } from '../src/events.js';
import { RotationService } from '../src/rotation/rotation-service.js';
import { readRotationState } from '../src/rotation/state.js';
import type { SecretProvider } from '../src/secrets/provider.js';
import { fixtureType, guardAgainstLeaks, localStore, testConfig } from './helpers/fleet.js';
import { useTestRedis } from './helpers/redis.js';

const redis = useTestRedis();
guardAgainstLeaks();

function config(graceSeconds = 3600) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'fleet-rotlife-'));
  return {
    dataDir,
    config: testConfig(redis.url, [fixtureType('t', 'ok.mjs')], {
      dataDir,
      secrets: {
        items: { 'api-key': { rotation: { schedule: 'weekly', rotator: { type: 'random' }, graceSeconds } } },
      },
    }),
  };
}

/** Connections the test Redis serves now (ours included). */
async function clients(): Promise<number> {
  const r = new Redis(redis.url);
  try {
    return String(await r.client('LIST'))
      .trim()
      .split('\n').length;
  } finally {
    r.disconnect();
  }
}

describe('rotation scheduler lifecycle', () => {
  it('starts once: a second start() and a start() after stop() are refused with ILLEGAL_STATE', async () => {
    const { config: c, dataDir } = config();
    await localStore(dataDir).write('api-key', Buffer.from('initial-value-0001'));
    const svc = new RotationService({ config: c, redisUrl: redis.url, events: new FleetEventBus() });
    await svc.start();
    expect(svc.state).toBe('running');
    await expect(svc.start()).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });
    await svc.stop();
    expect(svc.state).toBe('stopped');
    await expect(svc.start()).rejects.toMatchObject({
      code: 'ILLEGAL_STATE',
      message: expect.stringContaining('create a new instance'),
    });
    await svc.stop();

    const never = new RotationService({ config: c, redisUrl: redis.url, events: new FleetEventBus() });
    await never.stop();
    expect(never.state).toBe('stopped');
  });

  it('a failed start closes every connection it opened, then stop() ends it', async () => {
    const { config: c } = config();
    const before = await clients();
    const svc = new RotationService({
      config: c,
      redisUrl: redis.url,
      events: new FleetEventBus(),
      openProvider: () => Promise.reject(new Error('the secret backend is unreachable')),
    });
    await expect(svc.start()).rejects.toThrow('the secret backend is unreachable');
    expect(svc.state).toBe('failed');
    await expect.poll(clients, { timeout: 5000 }).toBe(before);
    await svc.stop();
    expect(svc.state).toBe('stopped');
  });

  it('stop() waits for a retirement a sweep already claimed: it is finished, not lost', async () => {
    const { config: c, dataDir } = config(1);
    const store = localStore(dataDir, 10);
    await store.write('api-key', Buffer.from('initial-value-0001'));
    let retiring: (() => void) | null = null;
    const retired: string[] = [];
    // The local store, with a retire() that is held until the test lets it go.
    const slowStore = (): SecretProvider => {
      const p = localStore(dataDir, 10);
      const retire = p.retire.bind(p);
      p.retire = async (name: string, version: string) => {
        // Only the previous version's retirement is held (a promotion retires its pending copy too).
        if (version === '1') await new Promise<void>((r) => (retiring = r));
        await retire(name, version);
        retired.push(version);
      };
      return p;
    };
    const svc = new RotationService({
      config: c,
      redisUrl: redis.url,
      events: new FleetEventBus(),
      openProvider: () => Promise.resolve(slowStore()),
    });
    await svc.start();
    const job = await svc.rotateNow('api-key');
    await expect.poll(() => job.getState(), { timeout: 15_000 }).toBe('completed');
    // Version 1 retires once its grace second has passed: the periodic sweep (or this explicit
    // one) claims it and is held inside retire().
    const sweeping = svc.sweep();
    await expect.poll(() => retiring !== null, { timeout: 10_000 }).toBe(true);
    const stopping = svc.stop().then(() => retired.push('stopped'));
    // The sweep holds its claim (the retire: field is gone from Redis) while stop() waits for it.
    await expect.poll(() => svc.state).toBe('draining');
    retiring!();
    await sweeping;
    await stopping;
    expect(retired).toEqual(['1', 'stopped']);
    const state = await readRotationState(redis.client, c.redis.prefix, 'api-key');
    expect(state.retiring).toEqual({});
    await expect(store.readVersion('api-key', '1')).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND' });
  });

  it('a previous version retires when its grace window has passed on the clock, not before (no sleep)', async () => {
    const { config: c, dataDir } = config(3600);
    const store = localStore(dataDir, 10);
    await store.write('api-key', Buffer.from('initial-value-0001'));
    const clock = new ManualClock();
    const svc = new RotationService({ config: c, redisUrl: redis.url, events: new FleetEventBus(), clock });
    await svc.start();
    try {
      const job = await svc.rotateNow('api-key');
      await expect.poll(() => job.getState(), { timeout: 15_000 }).toBe('completed');
      await svc.sweep();
      expect(Buffer.from((await store.readVersion('api-key', '1')).value).toString()).toBe('initial-value-0001');
      clock.advance(3600 * 1000 - 1);
      await svc.sweep();
      expect((await store.readVersion('api-key', '1')).version).toBe('1');
      clock.advance(2);
      await svc.sweep();
      await expect(store.readVersion('api-key', '1')).rejects.toMatchObject({ code: 'SECRET_NOT_FOUND' });
    } finally {
      await svc.stop();
    }
  });
});
