import { supervisorsKey } from '../../src/redis/keys.js';
import { REDIS_ROLES, rolePasswordEnv, urlWithCredential, type RoleCredentials } from '../../src/redis/acl.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { resolveConfig, type FleetConfig } from '../../src/config/resolve.js';
import { Producer } from '../../src/producers/producer.js';
import { compiledPath, projectRoot } from '../../src/runtime-path.js';

/** Shared pieces of the chaos scenarios: real supervisor processes over a JSON config. */
export { until } from '../helpers/until.js';

export const CHAOS_PROCESSORS = path.dirname(compiledPath(import.meta.url, './processors/work.js'));
const FLEET_BIN = path.join(projectRoot(CHAOS_PROCESSORS), 'bin', 'fleet.js');

export interface ChaosFleet {
  dir: string;
  file: string;
  config: FleetConfig;
  producer: Producer;
  supervisors: SupervisorProcess[];
  /** `env`: added to the supervisor's environment (NODE_OPTIONS for heap snapshots, say). */
  spawnSupervisor(env?: Record<string, string>): Promise<SupervisorProcess>;
  release(): Promise<void>;
}

export interface SupervisorProcess {
  child: ChildProcess;
  /** False once the process has exited, by any means (a SIGKILLed child keeps exitCode null). */
  alive: () => boolean;
  exited: Promise<void>;
  output: () => string;
  rssMb: () => number;
}

/** A chaos Redis: it runs with the fleet's per-role ACL users, built for `prefix`. */
export interface ChaosRedis {
  url: string;
  prefix: string;
  users: { roles: RoleCredentials };
}

export async function chaosFleet(redis: ChaosRedis, input: Record<string, unknown>): Promise<ChaosFleet> {
  const dir = mkdtempSync(path.join(tmpdir(), 'fleet-chaos-'));
  const file = path.join(dir, 'fleet.config.json');
  const raw = {
    dataDir: dir,
    redis: { prefix: redis.prefix },
    ...input,
    supervisor: { metricsPort: 0, heartbeatMs: 500, ...(input.supervisor as object) },
  };
  writeFileSync(file, JSON.stringify(raw));
  const redisUrl = redis.url;
  const config = resolveConfig(
    { ...raw, redis: { ...(raw.redis as object), url: redisUrl } },
    { baseDir: dir, source: file },
  );
  const producer = new Producer({ config, redis: urlWithCredential(redisUrl, redis.users.roles.api!), name: 'chaos' });
  const roleEnv = Object.fromEntries(REDIS_ROLES.map((r) => [rolePasswordEnv(r), redis.users.roles[r]!.password]));
  const supervisors: SupervisorProcess[] = [];
  const spawnSupervisor = async (env: Record<string, string> = {}): Promise<SupervisorProcess> => {
    const child = spawn(process.execPath, [FLEET_BIN, 'start', '--role', 'worker', '--config', file], {
      env: { ...process.env, ...roleEnv, REDIS_URL: redisUrl, LOG_LEVEL: 'warn', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
    child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-20_000)));
    let alive = true;
    const exited = new Promise<void>((r) =>
      child.once('exit', () => {
        alive = false;
        r();
      }),
    );
    const sp: SupervisorProcess = {
      child,
      alive: () => alive,
      exited,
      output: () => out,
      rssMb: () => {
        try {
          return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
        } catch {
          return 0;
        }
      },
    };
    supervisors.push(sp);
    // Ready when its heartbeat says running.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const h = await producer.redis
        .hgetall(supervisorsKey(config.redis.prefix))
        .catch(() => ({}) as Record<string, string>);
      if (
        Object.values(h).some(
          (v) => (JSON.parse(v) as { pid: number; state: string }).pid === child.pid && v.includes('"running"'),
        )
      )
        break;
      if (!alive || Date.now() > deadline) throw new Error(`supervisor did not start: ${out.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return sp;
  };
  return {
    dir,
    file,
    config,
    producer,
    supervisors,
    spawnSupervisor,
    async release() {
      for (const s of supervisors) if (s.alive()) s.child.kill('SIGKILL');
      await Promise.all(supervisors.map((s) => s.exited));
      await producer.close();
    },
  };
}

export function quantile(values: number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))]! : NaN;
}
