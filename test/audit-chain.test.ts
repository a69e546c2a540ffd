/**
 * The audit trail's MAC chain on a real Redis: tampering of each kind is found and named, a
 * legitimate trim with its checkpoint still verifies, and so do several supervisors writing at
 * once and restarts. The export outside Redis verifies on its own.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { main } from '../src/cli/main.js';
import { FleetEventBus } from '../src/events.js';
import { FleetMetrics } from '../src/observability/metrics.js';
import { silentLogger } from '../src/observability/logger.js';
import { auditHeadsKey, auditStreamKey } from '../src/redis/keys.js';
import { AuditLog, openAuditSink, readAudit, verifyAuditTrail, type AuditRecord } from '../src/secrets/audit.js';
import { ChainWriter, loadAuditKeys, type AuditKeyRing } from '../src/secrets/audit-chain.js';
import { trimAuditWithCheckpoint } from '../src/secrets/audit-retention.js';
import { fixtureType, makeProducer, startSupervisor, testConfig, waitForJob, localStore } from './helpers/fleet.js';
import { uniquePrefix } from './helpers/redis.js';
import { describe, expect, it, type TestRedis } from './helpers/fixture.js';

async function keyRing(
  dir = mkdtempSync(path.join(tmpdir(), 'fleet-audit-')),
): Promise<{ keys: AuditKeyRing; dir: string }> {
  return { keys: await loadAuditKeys(localStore(dir), 'audit-mac-key', { create: true }), dir };
}

const record = (i: number, writer: string): AuditRecord => ({
  ts: Date.now(),
  outcome: 'granted',
  secret: 'api-key',
  version: '1',
  jobId: `job-${i}`,
  jobType: 'reader',
  workerId: writer,
  provider: 'local',
  latencyMs: 1,
  action: 'access',
});

/** Three writers appending interleaved records, as three supervisors do. */
async function writeStream(redis: TestRedis, prefix: string, keys: AuditKeyRing, perWriter = 10): Promise<void> {
  // A writer id names one chain from start to stop: each call is a fresh set of supervisors.
  const run = uniquePrefix();
  const logs = ['sup-a', 'sup-b', 'sup-c']
    .map((w) => `${w}-${run}`)
    .map((w) => ({
      w,
      log: new AuditLog({ redis: redis.client, prefix, logger: silentLogger, chain: new ChainWriter(w, keys) }),
    }));
  for (let i = 0; i < perWriter; i++) for (const { w, log } of logs) log.record(record(i, w));
  for (const { log } of logs) await log.flush();
}

async function entries(redis: TestRedis, prefix: string): Promise<[string, string[]][]> {
  return (await redis.client.xrange(auditStreamKey(prefix), '-', '+')) as [string, string[]][];
}

const writerOf = (e: [string, string[]]): string => e[1][e[1].indexOf('writer') + 1]!;

/** The id of the next record after index `i` written by the same writer. */
function nextOfSameWriter(all: [string, string[]][], i: number): string {
  return all.slice(i + 1).find((e) => writerOf(e) === writerOf(all[i]!))![0];
}

describe('audit MAC chain', () => {
  it('verify names the first broken link: a deleted record, an inserted forgery, an edited field, a reorder, a truncated tail', async ({
    redis,
  }) => {
    const { keys } = await keyRing();
    const cases: {
      name: string;
      tamper: (prefix: string, all: [string, string[]][]) => Promise<string>;
      reason: RegExp;
    }[] = [
      {
        name: 'deleted',
        tamper: async (p, all) => {
          await redis.client.xdel(auditStreamKey(p), all[10]![0]);
          return nextOfSameWriter(all, 10);
        },
        reason: /1 record\(s\) of this writer are missing before it/,
      },
      {
        name: 'forged',
        tamper: async (p, all) => {
          // A copy of a real record with another job id, and a MAC field it cannot compute.
          const fields = [...all[4]![1]];
          fields[fields.indexOf('jobId') + 1] = 'forged-job';
          return (await redis.client.xadd(auditStreamKey(p), '*', ...fields))!;
        },
        reason: /MAC does not match/,
      },
      {
        name: 'edited',
        tamper: async (p, all) => {
          // Rewrite record 7 with one field changed (delete + re-add is the only edit a stream allows)…
          // …so edit the content of a fresh stream instead: same id order, one field different.
          const key = auditStreamKey(p);
          const copy: [string, string[]][] = all.map(([id, f]) => [id, [...f]]);
          copy[7]![1][copy[7]![1].indexOf('outcome') + 1] = 'denied';
          await redis.client.del(key);
          for (const [id, f] of copy) await redis.client.xadd(key, id, ...f);
          return copy[7]![0];
        },
        reason: /MAC does not match: the record was edited or forged/,
      },
      {
        name: 'reordered',
        tamper: async (p, all) => {
          const [id, f] = all[3]!;
          await redis.client.xdel(auditStreamKey(p), id);
          await redis.client.xadd(auditStreamKey(p), '*', ...f);
          return nextOfSameWriter(all, 3); // it now follows a gap; the moved record comes later
        },
        reason: /missing before it/,
      },
      {
        name: 'truncated tail',
        tamper: async (p, all) => {
          for (const [id] of all.slice(-3)) await redis.client.xdel(auditStreamKey(p), id);
          return 'end';
        },
        reason: /the chain ends at seq 7 but the writer.s head is seq 10: the newest 3 record\(s\) were removed/,
      },
    ];
    for (const c of cases) {
      const prefix = uniquePrefix();
      await writeStream(redis, prefix, keys);
      expect((await verifyAuditTrail(redis.client, prefix, keys)).ok, `${c.name}: clean stream`).toBe(true);
      const at = await c.tamper(prefix, await entries(redis, prefix));
      const r = await verifyAuditTrail(redis.client, prefix, keys);
      expect(r.ok, c.name).toBe(false);
      expect(r.firstBreak?.at, c.name).toBe(at);
      expect(r.firstBreak?.reason, c.name).toMatch(c.reason);
    }
  });

  it('a record without chain fields (XADD by hand) and a replayed record are caught', async ({ redis }) => {
    const { keys } = await keyRing();
    const prefix = uniquePrefix();
    await writeStream(redis, prefix, keys, 3);
    const all = await entries(redis, prefix);
    await redis.client.xadd(auditStreamKey(prefix), '*', ...all[1]![1]);
    let r = await verifyAuditTrail(redis.client, prefix, keys);
    expect(r.firstBreak?.reason).toMatch(/reordered or replayed/);
    const other = uniquePrefix();
    await writeStream(redis, other, keys, 3);
    await redis.client.xadd(
      auditStreamKey(other),
      '*',
      'ts',
      '1',
      'action',
      'access',
      'outcome',
      'granted',
      'secret',
      'api-key',
    );
    r = await verifyAuditTrail(redis.client, other, keys);
    expect(r.firstBreak?.reason).toMatch(/no MAC chain fields/);
    // Read back for `fleet audit` / GET /v1/audit, a stored outcome that is none of ours is not passed on.
    await redis.client.xadd(auditStreamKey(other), '*', 'ts', 'soon', 'outcome', '<script>', 'secret', 'api-key');
    const [newest] = await readAudit(redis.client, other, { limit: 1 });
    expect(newest).toMatchObject({ outcome: 'error', ts: 0, reason: expect.stringContaining('no valid outcome') });
  });

  it('a legitimate trim leaves a signed checkpoint and the stream still verifies; trimming without one (XADD MAXLEN) is found', async ({
    redis,
  }) => {
    const { keys } = await keyRing();
    const prefix = uniquePrefix();
    const retention = new ChainWriter('retention-test', keys);
    await writeStream(redis, prefix, keys, 10);
    const first = await trimAuditWithCheckpoint(redis.client, prefix, { maxEntries: 12, chain: retention, keys });
    expect(first).toMatchObject({ trimmed: 18 });
    expect(first.checkpoint).toMatch(/^\d+-\d+$/);
    let r = await verifyAuditTrail(redis.client, prefix, keys);
    expect(r.firstBreak).toBeNull();
    expect(r.checkpoint).toBe(first.checkpoint);
    // More records, a second trim that also drops the first checkpoint: still verifies.
    await writeStream(redis, prefix, keys, 10);
    const second = await trimAuditWithCheckpoint(redis.client, prefix, { maxEntries: 12, chain: retention, keys });
    expect(second.trimmed).toBeGreaterThan(12);
    r = await verifyAuditTrail(redis.client, prefix, keys);
    expect(r.firstBreak).toBeNull();
    expect(r.checkpoint).toBe(second.checkpoint);
    // The worker role can XADD, and XADD takes MAXLEN: a trim without a checkpoint.
    await redis.client.xadd(auditStreamKey(prefix), 'MAXLEN', '5', '*', 'x', '1');
    r = await verifyAuditTrail(redis.client, prefix, keys);
    expect(r.ok).toBe(false);
    expect(r.firstBreak?.reason).toMatch(/missing before it|no MAC chain fields/);
  });

  it('a flood of cheap denials cannot push an egress refusal out without trace: checkpoints count what they trimmed, by action', async ({
    redis,
  }) => {
    const { keys } = await keyRing();
    const prefix = uniquePrefix();
    const retention = new ChainWriter('retention-test', keys);
    const w = `sup-${uniquePrefix()}`;
    const log = new AuditLog({ redis: redis.client, prefix, logger: silentLogger, chain: new ChainWriter(w, keys) });
    const denied = (action: string, secret: string): AuditRecord => ({
      ...record(0, w),
      action,
      secret,
      outcome: 'denied',
      reason: 'x',
    });
    log.record(denied('egress-refused', '-'));
    for (let i = 0; i < 300; i++) log.record(denied('access', '(undeclared)'));
    await log.flush();
    await trimAuditWithCheckpoint(redis.client, prefix, { maxEntries: 100, chain: retention, keys });
    for (let i = 0; i < 300; i++) log.record(denied('access', '(undeclared)'));
    await log.flush();
    await trimAuditWithCheckpoint(redis.client, prefix, { maxEntries: 100, chain: retention, keys });
    const r = await verifyAuditTrail(redis.client, prefix, keys);
    expect(r.ok).toBe(true);
    // Running totals across both checkpoints: the refusal is gone from the stream, not from the count.
    expect(r.trimmed?.denied).toEqual({ 'egress-refused': 1, access: expect.any(Number) as number });
    expect(r.trimmed?.denied.access).toBeGreaterThanOrEqual(400);
    const { renderVerify } = await import('../src/cli/trail-commands.js');
    expect(renderVerify(r)).toMatch(
      /retention trimmed \d+ older records, among them denied: egress-refused 1, access \d+/,
    );
  });

  it('retention refuses to trim a segment that does not verify (it would launder the tampering)', async ({ redis }) => {
    const { keys } = await keyRing();
    const prefix = uniquePrefix();
    await writeStream(redis, prefix, keys, 10);
    await redis.client.xdel(auditStreamKey(prefix), (await entries(redis, prefix))[2]![0]);
    const before = await redis.client.xlen(auditStreamKey(prefix));
    const r = await trimAuditWithCheckpoint(redis.client, prefix, {
      maxEntries: 12,
      chain: new ChainWriter('retention-test', keys),
      keys,
    });
    expect(r).toMatchObject({ trimmed: 0, checkpoint: null });
    expect(r.report?.ok).toBe(false);
    expect(await redis.client.xlen(auditStreamKey(prefix))).toBe(before);
  });

  it('several supervisors writing at once and a restarted one all verify; the export file verifies on its own and shows an edit', async ({
    redis,
  }) => {
    const exportFile = path.join(mkdtempSync(path.join(tmpdir(), 'fleet-audit-export-')), 'audit.jsonl');
    const config = testConfig(
      redis.url,
      [fixtureType('reader', 'secret-reader.mjs', { secrets: ['api-key'], concurrency: 4, warmSandboxes: 2 })],
      { secrets: { audit: { export: exportFile } } },
    );
    await localStore(config.dataDir).write('api-key', Buffer.from('chain-secret-value-42'));
    const a = await startSupervisor({ config });
    const b = await startSupervisor({ config });
    const producer = makeProducer(config);
    const run = async (n: number): Promise<void> => {
      const ids = await Promise.all(
        Array.from({ length: n }, () => producer.enqueue('reader', { names: ['api-key'] }).then((j) => j.id)),
      );
      for (const id of ids) expect((await waitForJob(producer, id)).state).toBe('completed');
    };
    await run(30);
    await a.stop();
    const c = await startSupervisor({ config });
    await run(10);
    await b.stop();
    await c.stop();
    const keys = await loadAuditKeys(localStore(config.dataDir), 'audit-mac-key', { create: false });
    const r = await verifyAuditTrail(redis.client, config.redis.prefix, keys);
    expect(r.firstBreak).toBeNull();
    expect(r.records).toBe(40);
    expect(r.writers).toBeGreaterThanOrEqual(2);
    expect(new Set((await entries(redis, config.redis.prefix)).map(([, f]) => f[f.indexOf('writer') + 1])).size).toBe(
      r.writers,
    );

    // The CLI, against Redis and against the export.
    const cfgFile = path.join(config.dataDir, 'fleet.config.json');
    writeFileSync(
      cfgFile,
      JSON.stringify({
        dataDir: config.dataDir,
        redis: { url: redis.url, prefix: config.redis.prefix },
        jobTypes: [
          { name: 'reader', processor: path.resolve('test/fixtures/secret-reader.mjs'), secrets: ['api-key'] },
        ],
      }),
    );
    const cli = async (args: string[]): Promise<{ code: number; out: string }> => {
      let out = '';
      const code = await main([...args, '--config', cfgFile], {
        out: (s) => (out += `${s}\n`),
        err: (s) => (out += `${s}\n`),
      });
      return { code, out };
    };
    expect(await cli(['audit', 'verify'])).toMatchObject({
      code: 0,
      out: expect.stringMatching(/audit chain OK: 40 records/),
    });
    expect(await cli(['audit', 'verify', '--file', exportFile])).toMatchObject({
      code: 0,
      out: expect.stringMatching(/audit chain OK: 40 records/),
    });
    const lines = readFileSync(exportFile, 'utf8').trim().split('\n');
    const edited = JSON.parse(lines[5]!) as Record<string, string>;
    edited.outcome = 'denied';
    lines[5] = JSON.stringify(edited);
    writeFileSync(exportFile, `${lines.join('\n')}\n`);
    const broken = await cli(['audit', 'verify', '--file', exportFile]);
    expect(broken.code).toBe(1);
    expect(broken.out).toMatch(/audit chain BROKEN[\s\S]*first at line 6 .*MAC does not match/);
    // In Redis: delete one record, and the CLI exits 1 naming it.
    const victim = (await entries(redis, config.redis.prefix))[12]![0];
    await redis.client.xdel(auditStreamKey(config.redis.prefix), victim);
    expect(await cli(['audit', 'verify'])).toMatchObject({ code: 1, out: expect.stringMatching(/audit chain BROKEN/) });
    const exported = await cli(['audit', 'export']);
    expect(
      exported.out
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('{')),
    ).toHaveLength(39);
  }, 60_000);

  it("a supervisor's tail check turns the metric to 0 when the chain breaks, and notices its own head was rolled back", async ({
    redis,
  }) => {
    const config = testConfig(redis.url, [fixtureType('reader', 'secret-reader.mjs', { secrets: ['api-key'] })]);
    await localStore(config.dataDir).write('api-key', Buffer.from('tail-secret-value-42'));
    const events = new FleetEventBus();
    const metrics = new FleetMetrics({ defaultMetrics: false });
    metrics.attach(events);
    const sup = await startSupervisor({ config, events });
    const producer = makeProducer(config);
    for (let i = 0; i < 5; i++)
      expect((await waitForJob(producer, (await producer.enqueue('reader', { names: ['api-key'] })).id)).state).toBe(
        'completed',
      );
    expect((await sup.checkAuditTail())?.ok).toBe(true);
    expect((await metrics.registry.getSingleMetricAsString('fleet_audit_chain_ok')).trim().split('\n').pop()).toBe(
      'fleet_audit_chain_ok 1',
    );
    // Cut the newest record and point the head at the one before: consistent inside Redis, but
    // the supervisor remembers what it wrote.
    const key = auditStreamKey(config.redis.prefix);
    const all = await entries(redis, config.redis.prefix);
    const [lastId] = all[all.length - 1]!;
    const prev = all[all.length - 2]![1];
    await redis.client.xdel(key, lastId);
    await redis.client.hset(
      auditHeadsKey(config.redis.prefix),
      sup.id,
      `${prev[prev.indexOf('seq') + 1]}:${prev[prev.indexOf('mac') + 1]}`,
    );
    const r = await sup.checkAuditTail();
    expect(r?.ok).toBe(false);
    expect(r?.firstBreak?.reason).toMatch(/this supervisor wrote 5 records but its head in Redis says 4/);
    expect((await metrics.registry.getSingleMetricAsString('fleet_audit_chain_ok')).trim().split('\n').pop()).toBe(
      'fleet_audit_chain_ok 0',
    );
    expect(await metrics.registry.getSingleMetricAsString('fleet_audit_chain_breaks_total')).toMatch(
      /fleet_audit_chain_breaks_total\{by="tail"\} 1/,
    );
  });

  it('the export sink appends JSON lines with the chain fields, and a job type may not declare the MAC key', async ({
    redis,
  }) => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'fleet-audit-sink-')), 'a.jsonl');
    const { keys } = await keyRing();
    const log = new AuditLog({
      redis: redis.client,
      prefix: uniquePrefix(),
      logger: silentLogger,
      chain: new ChainWriter('w', keys),
      sink: openAuditSink(file),
    });
    log.record(record(1, 'w'));
    await log.close();
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({
      writer: 'w',
      seq: '1',
      prev: 'genesis',
      kv: keys.current.version,
      mac: expect.stringMatching(/^[0-9a-f]{64}$/),
    });
    expect(() => testConfig(redis.url, [fixtureType('thief', 'ok.mjs', { secrets: ['audit-mac-key'] })])).toThrow(
      /the audit trail's MAC key/,
    );
  });
});
