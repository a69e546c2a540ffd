/** `fleet enqueue`, `fleet job` and `fleet status`: jobs in, a job's state, the fleet at a glance. */
import { Queue } from 'bullmq';
import type { FleetConfig } from '../config/resolve.js';
import { FLEET_PRODUCER_NAMES } from '../config/schema.js';
import { FleetError, toError } from '../errors.js';
import { Producer } from '../producers/producer.js';
import { queuePrefix } from '../redis/keys.js';
import { queueDepths, readSupervisorStatuses, type SupervisorStatus } from '../workers/supervisor-status.js';
import { need, withRedis, type CommandContext } from './command.js';
import * as sec from './secrets-commands.js';

async function withProducer<T>(config: FleetConfig, role: 'api' | 'ops', fn: (p: Producer) => Promise<T>): Promise<T> {
  // The ops role reads: it holds no data key, and shows data sealed at rest as it is stored.
  const p = new Producer({
    config,
    redis: need(config, role),
    name: FLEET_PRODUCER_NAMES.cli,
    ...(role === 'ops' ? { dataKeys: null } : {}),
  });
  try {
    return await fn(p);
  } finally {
    await p.close();
  }
}

function status(
  config: FleetConfig,
): Promise<{ supervisors: SupervisorStatus[]; queues: Record<string, Record<string, number>> }> {
  return withRedis(config, 'ops', async (redis) => {
    const { live: supervisors } = await readSupervisorStatuses(
      redis,
      config.redis.prefix,
      config.supervisor.heartbeatMs,
    );
    const queues: Record<string, Record<string, number>> = {};
    for (const name of config.jobTypes.keys()) {
      const q = new Queue(name, { connection: redis, prefix: queuePrefix(config.redis.prefix, name) });
      queues[name] = await queueDepths(q);
      await q.close();
    }
    return { supervisors, queues };
  });
}

function renderStatus(s: Awaited<ReturnType<typeof status>>): string {
  const lines = [`supervisors: ${s.supervisors.length}`];
  for (const sup of s.supervisors) {
    lines.push(`  ${sup.id}  ${sup.state}  pid ${sup.pid}  up ${Math.round((Date.now() - sup.startedAt) / 1000)}s`);
    for (const t of sup.types)
      lines.push(
        `    ${t.jobType.padEnd(20)} ${t.isolation.padEnd(4)} active ${t.active}/${t.concurrency}  sandboxes warm ${t.warm} busy ${t.busy} starting ${t.starting}  layers ${(t.layers ?? []).join('+') || '(none started)'}`,
      );
  }
  lines.push('queues:');
  for (const [name, c] of Object.entries(s.queues)) {
    lines.push(
      `  ${name.padEnd(20)} waiting ${c.waiting ?? 0}  active ${c.active ?? 0}  delayed ${c.delayed ?? 0}  failed ${c.failed ?? 0}  completed ${c.completed ?? 0}`,
    );
  }
  return lines.join('\n');
}

/** `fleet enqueue <type> <json> [--idempotency-key K]` */
export async function enqueueCommand({ config, opts, args, print }: CommandContext): Promise<number> {
  const [type, json] = args;
  if (!type || json === undefined) throw new FleetError('INVALID_REQUEST', 'usage: fleet enqueue <type> <json>');
  let data: unknown;
  try {
    data = JSON.parse(json);
  } catch (err) {
    throw new FleetError('INVALID_JSON', `payload is not valid JSON: ${toError(err).message}`);
  }
  const key = opts['idempotency-key'];
  const r = await withProducer(config, 'api', (p) => p.enqueue(type, data, key ? { idempotencyKey: key } : {}));
  print(r.id, r);
  return 0;
}

/** `fleet job <id>` */
export async function jobCommand({ config, args, print }: CommandContext): Promise<number> {
  const [id] = args;
  if (!id) throw new FleetError('INVALID_REQUEST', 'usage: fleet job <id>');
  const job = await withProducer(config, 'ops', (p) => p.getJob(id));
  print(JSON.stringify(job, null, 2), job);
  return 0;
}

/** `fleet status [--workers] [--secrets]`: both when neither is given. */
export async function statusCommand({ config, opts, print }: CommandContext): Promise<number> {
  const both = !opts.workers && !opts.secrets;
  const out: Record<string, unknown> = {};
  const human: string[] = [];
  if (opts.workers || both) {
    const s = await status(config);
    Object.assign(out, s);
    human.push(renderStatus(s));
  }
  if (opts.secrets || both) {
    const rows = await withRedis(config, 'ops', (r) => sec.secretsStatus(config, r));
    out.secrets = rows;
    human.push(`secrets:\n${sec.renderSecretsStatus(rows)}`);
  }
  print(human.join('\n'), out);
  return 0;
}
