/**
 * There is no Docker engine on our machines, so the compose stack is checked against the code and
 * config instead of being run: images pinned, env vars the app reads set (and none it does not),
 * ports and Prometheus targets consistent, mounted files present, Dockerfile production-minded.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { REDIS_ROLES, rolePasswordEnv } from '../src/redis/acl.js';
import { resolveConfig } from '../src/config/resolve.js';
import { FIXTURES } from './helpers/fleet.js';
import { findBinary } from './helpers/servers.js';

const ROOT = path.join(FIXTURES, '..', '..');
const read = (f: string): string => readFileSync(path.join(ROOT, f), 'utf8');

interface Service {
  image?: string;
  build?: unknown;
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  healthcheck?: { test?: string[]; disable?: boolean };
  depends_on?: Record<string, { condition: string }> | string[];
  deploy?: { replicas?: number };
}
const compose = parse(read('docker-compose.yml'), { merge: true }) as { services: Record<string, Service> };
const services = compose.services;
const FLEET_ROLES: Record<string, string> = { api: 'api', worker: 'worker', scheduler: 'scheduler' };

/** Every `process.env.X` the source reads, plus the env names the config points at. */
function envVarsTheAppReads(): Set<string> {
  const names = new Set<string>();
  const walk = (dir: string): void => {
    for (const f of readdirSync(dir)) {
      const p = path.join(dir, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (p.endsWith('.ts'))
        for (const m of readFileSync(p, 'utf8').matchAll(/process\.env\.([A-Z_]+)/g)) names.add(m[1]!);
    }
  };
  walk(path.join(ROOT, 'src'));
  const schema = read('src/config/schema.ts');
  for (const m of schema.matchAll(/Env: z\.string\(\)\.default\('([A-Z_]+)'\)/g)) {
    names.add(m[1]!);
    names.add(`${m[1]}_FILE`);
  }
  // The Redis role passwords (named from the role list).
  for (const role of REDIS_ROLES)
    for (const n of [rolePasswordEnv(role), `${rolePasswordEnv(role)}_FILE`]) names.add(n);
  // Read by libraries and the image: the AWS SDK's credential chain, Node, the Dockerfile healthcheck.
  for (const n of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'NODE_ENV', 'HEALTH_URL']) names.add(n);
  return names;
}

/** The compose config, resolved under the worker service's own compose environment. */
const composeConfig = (): ReturnType<typeof resolveConfig> => {
  const raw = JSON.parse(read('deploy/fleet.compose.json')) as Record<string, unknown>;
  const env = services.worker!.environment ?? {};
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return resolveConfig(raw, { baseDir: path.join(ROOT, 'deploy'), source: 'deploy/fleet.compose.json' });
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
};

describe('docker compose stack, checked statically (npm run test:compose runs it on a real engine)', () => {
  it('pins every image to a version', () => {
    for (const [name, s] of Object.entries(services)) {
      expect(s.image, `${name} has an image`).toBeTruthy();
      expect(s.image, name).toMatch(/:[\w.-]*\d[\w.-]*$/);
      expect(s.image, name).not.toMatch(/:latest$/);
    }
    // The stages start from NODE_IMAGE, whose default is pinned (checked with the runtime image below).
    expect(read('Dockerfile')).not.toMatch(/FROM \S+:latest|FROM (?!\$\{NODE_IMAGE\})[^:\s]+\s/);
  });

  it('runs Redis with noeviction, AOF persistence, a healthcheck and ACLs: default is a password-protected admin, each role its own user', () => {
    const cmd = services.redis!.command!.join(' ');
    expect(cmd).toContain('--maxmemory-policy noeviction');
    expect(cmd).toContain('--appendonly yes');
    expect(cmd).toContain('--aclfile /data/users.acl');
    // default keeps +@all (AOF replay runs as default, redis/redis#14541) behind the admin password.
    expect(cmd).toMatch(/user default on >\$\$REDIS_ADMIN_PASSWORD ~\* &\* \+@all/);
    expect(services.redis!.healthcheck?.test).toBeTruthy();
    // No fleet service gets the admin password; only the one-shot init does (it runs `fleet redis setup`).
    for (const name of ['api', 'worker', 'scheduler'])
      expect(JSON.stringify(services[name]!.environment)).not.toContain('REDIS_ADMIN_PASSWORD');
    expect(read('deploy/vault-init.sh')).toContain('fleet.js redis setup');
  });

  it('starts services in dependency order through healthchecks', () => {
    for (const [name, s] of Object.entries(services)) {
      const deps = Array.isArray(s.depends_on)
        ? Object.fromEntries(s.depends_on.map((d) => [d, { condition: 'service_started' }]))
        : (s.depends_on ?? {});
      for (const [dep, { condition }] of Object.entries(deps)) {
        expect(services[dep], `${name} depends on unknown ${dep}`).toBeTruthy();
        // A fleet image has a Dockerfile HEALTHCHECK; others need their own.
        if (condition === 'service_healthy')
          expect(
            Boolean(services[dep]!.healthcheck?.test) || Boolean(services[dep]!.build),
            `${dep} needs a healthcheck`,
          ).toBe(true);
      }
    }
    expect(services.worker!.depends_on).toMatchObject({
      'vault-init': { condition: 'service_completed_successfully' },
    });
    expect(services.worker!.deploy?.replicas).toBeGreaterThanOrEqual(2);
  });

  it('sets every environment variable each role needs, and none the app does not read', () => {
    const reads = envVarsTheAppReads();
    const config = composeConfig();
    const needs: Record<string, string[]> = {
      api: ['REDIS_URL', 'FLEET_CONFIG', 'FLEET_REDIS_API_PASSWORD_FILE', 'FLEET_REDIS_OPS_PASSWORD_FILE'],
      worker: [
        'REDIS_URL',
        'FLEET_CONFIG',
        'FLEET_REDIS_WORKER_PASSWORD_FILE',
        'VAULT_ADDR',
        `${config.secrets.vault!.roleIdEnv}_FILE`,
        `${config.secrets.vault!.secretIdEnv}_FILE`,
        'AWS_ACCESS_KEY_ID',
        'AWS_SECRET_ACCESS_KEY',
      ],
      scheduler: [
        'REDIS_URL',
        'FLEET_CONFIG',
        'FLEET_REDIS_SCHEDULER_PASSWORD_FILE',
        'FLEET_REDIS_RETENTION_PASSWORD_FILE',
        'VAULT_ADDR',
        `${config.secrets.vault!.rotatorRoleIdEnv}_FILE`,
        `${config.secrets.vault!.rotatorSecretIdEnv}_FILE`,
        'AWS_ACCESS_KEY_ID',
      ],
      'vault-init': ['REDIS_URL', 'FLEET_CONFIG', 'VAULT_ADDR', config.secrets.vault!.tokenEnv],
    };
    for (const [name, vars] of Object.entries(needs)) {
      const env = services[name]!.environment ?? {};
      for (const v of vars) expect(env[v], `${name} needs ${v}`).toBeTruthy();
      for (const v of Object.keys(env))
        expect(reads.has(v), `${name} sets ${v}, which nothing reads (typo?)`).toBe(true);
    }
    // Credential files are mounted where the env vars point.
    for (const name of ['api', 'worker', 'scheduler']) {
      const env = services[name]!.environment!;
      const mounts = (services[name]!.volumes ?? []).map((v) => v.split(':')[1]);
      for (const [k, v] of Object.entries(env))
        if (k.endsWith('_FILE'))
          expect(
            mounts.some((m) => v.startsWith(`${m}/`)),
            `${name} ${k}`,
          ).toBe(true);
    }
    expect(services['vault-init']!.entrypoint!.join(' ')).toContain('deploy/vault-init.sh');
  });

  it('uses a config that the fleet accepts, with ports matching compose and Prometheus', () => {
    const config = composeConfig();
    expect(services.api!.environment!.FLEET_CONFIG).toBe('/app/deploy/fleet.compose.json');
    expect(config.api.host).toBe('0.0.0.0');
    expect(config.supervisor.metricsHost).toBe('0.0.0.0');
    expect(services.api!.ports).toContain(`${config.api.port}:${config.api.port}`);
    expect(services.api!.command).toEqual(['start', '--role', 'api']);
    for (const [svc, role] of Object.entries(FLEET_ROLES)) {
      expect(services[svc]!.command).toEqual(['start', '--role', role]);
      const port = svc === 'api' ? config.api.port : config.supervisor.metricsPort;
      expect(services[svc]!.environment!.HEALTH_URL).toBe(`http://127.0.0.1:${port}/healthz`);
    }
    const prom = parse(read('deploy/prometheus.yml')) as {
      rule_files: string[];
      scrape_configs: {
        job_name: string;
        static_configs?: { targets: string[] }[];
        dns_sd_configs?: { names: string[]; port: number }[];
      }[];
    };
    const targets = prom.scrape_configs.flatMap((c) => [
      ...(c.static_configs ?? []).flatMap((s) => s.targets),
      ...(c.dns_sd_configs ?? []).flatMap((d) => d.names.map((n) => `${n}:${d.port}`)),
    ]);
    expect(targets.sort()).toEqual([
      `api:${config.api.port}`,
      `scheduler:${config.supervisor.metricsPort}`,
      `worker:${config.supervisor.metricsPort}`,
    ]);
    for (const t of targets) expect(services[t.split(':')[0]!], t).toBeTruthy();
    // vault-init creates the KMS key the config names on the compose KMS server (moto, port 5000).
    expect(config.secrets.kms!.keyId).toMatch(/^alias\//);
    expect(read('deploy/vault-init.sh')).toContain('fleet.js kms ensure-key');
    expect(config.secrets.kms!.endpoint).toBe('http://kms:5000');
  });

  it('mounts Prometheus and Grafana files that exist, at the paths their configs name', () => {
    for (const name of ['prometheus', 'grafana']) {
      for (const v of services[name]!.volumes ?? []) {
        const src = v.split(':')[0]!;
        if (src.startsWith('./')) expect(existsSync(path.join(ROOT, src)), `${name} mounts ${src}`).toBe(true);
      }
    }
    const prom = parse(read('deploy/prometheus.yml')) as { rule_files: string[] };
    const promMounts = services.prometheus!.volumes!.map((v) => v.split(':')[1]);
    for (const f of prom.rule_files) expect(promMounts).toContain(f);
    const dash = parse(read('grafana/provisioning/dashboards/fleet.yml')) as {
      providers: { options: { path: string } }[];
    };
    const grafanaMounts = services.grafana!.volumes!.map((v) => v.split(':')[1]);
    expect(grafanaMounts).toContain(dash.providers[0]!.options.path);
    expect(grafanaMounts).toContain('/etc/grafana/provisioning');
    const ds = parse(read('grafana/provisioning/datasources/prometheus.yml')) as {
      datasources: { url: string; uid: string }[];
    };
    expect(ds.datasources[0]!.url).toBe('http://prometheus:9090');
    expect(services.prometheus!.ports).toContain('9090:9090');
  });

  it('Prometheus accepts the compose scrape config (promtool)', () => {
    if (spawnSync('promtool', ['--version']).status !== 0) {
      console.warn('SKIPPING promtool check: promtool not installed (apt-get install prometheus)');
      return;
    }
    const dir = mkdtempSync(path.join(tmpdir(), 'fleet-promtool-'));
    writeFileSync(path.join(dir, 'alerts.yml'), read('prometheus/alerts.yml'));
    writeFileSync(
      path.join(dir, 'prometheus.yml'),
      read('deploy/prometheus.yml').replace('/etc/prometheus/alerts.yml', path.join(dir, 'alerts.yml')),
    );
    const r = spawnSync('promtool', ['check', 'config', path.join(dir, 'prometheus.yml')], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });

  it('has a production-minded Dockerfile: multi-stage, non-root, prod deps only, healthcheck, node as PID 1', () => {
    const df = read('Dockerfile');
    expect(df.match(/^FROM /gm)!.length).toBeGreaterThanOrEqual(2);
    expect(df).toMatch(/^USER node$/m);
    expect(df).toContain('npm ci --omit=dev');
    expect(df).toMatch(/^HEALTHCHECK /m);
    expect(df).toMatch(/^ENTRYPOINT \["node", "--disable-sigusr1", "bin\/fleet.js"\]$/m);
    expect(services.worker!.command![0]).toBe('start');
  });

  describe('loaded by compose-go, the loader Docker Compose itself uses', () => {
    const bin = findBinary(['compose-check']);
    if (!bin)
      console.warn(
        'SKIPPING compose-go checks: compose-check is not built. Fix: bash scripts/install-test-servers.sh (builds test/compose-check from the Go module proxy)',
      );
    const load = (
      file: string,
    ): {
      status: number | null;
      project?: {
        services: Record<
          string,
          {
            image: string;
            depends_on?: Record<string, { condition: string }>;
            deploy?: { replicas?: number };
            environment?: Record<string, string | null>;
          }
        >;
      };
      stderr: string;
    } => {
      const r = spawnSync(bin!, [file], { encoding: 'utf8', cwd: ROOT, env: { PATH: process.env.PATH ?? '' } });
      return {
        status: r.status,
        stderr: r.stderr,
        ...(r.status === 0 ? { project: JSON.parse(r.stdout) as never } : {}),
      };
    };

    it.skipIf(!bin)('accepts docker-compose.yml: schema, interpolation and every reference resolve', () => {
      const r = load(path.join(ROOT, 'docker-compose.yml'));
      expect(r.status, r.stderr).toBe(0);
      const svcs = r.project!.services;
      expect(Object.keys(svcs).sort()).toEqual(Object.keys(services).sort());
      // Interpolated defaults and the YAML anchors are resolved the way Docker Compose resolves them.
      expect(svcs['vault-init']!.environment!.VAULT_TOKEN).toBe('fleet-dev-root');
      expect(svcs.worker!.environment!.REDIS_URL).toBe('redis://redis:6379');
      expect(svcs.worker!.deploy?.replicas).toBe(services.worker!.deploy!.replicas);
      expect(svcs.worker!.depends_on!['vault-init']!.condition).toBe('service_completed_successfully');
    });

    it.skipIf(!bin)('refuses a compose file with a broken reference (the check can fail)', () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'fleet-compose-'));
      writeFileSync(
        path.join(dir, 'docker-compose.yml'),
        read('docker-compose.yml').replace(
          'redis: { condition: service_healthy }',
          'rediss: { condition: service_healthy }',
        ),
      );
      const r = load(path.join(dir, 'docker-compose.yml'));
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/rediss/);
    });
  });

  it('uses maintained releases: current Node LTS base image, Prometheus 3, Redis 8, Grafana 12, moto for KMS', () => {
    const df = read('Dockerfile');
    // Both stages start from NODE_IMAGE, the Node 26 LTS image unless a stand-in is passed.
    expect(df).toMatch(/^ARG NODE_IMAGE=node:26\.\d+\.\d+-trixie-slim$/m);
    for (const from of df.match(/^FROM \S+/gm)!) expect(from).toBe('FROM ${NODE_IMAGE}');
    expect(df).not.toMatch(/node:2[02]\b/);
    expect(services.prometheus!.image).toMatch(/^prom\/prometheus:v3\./);
    expect(services.redis!.image).toMatch(/^redis:8\./);
    expect(services.grafana!.image).toMatch(/^grafana\/grafana:12\./);
    expect(services.kms!.image).toMatch(/^motoserver\/moto:5\./);
  });

  it('lets the worker and scheduler create sandbox namespaces with no more than that, and requires the OS layer there', () => {
    const df = read('Dockerfile');
    expect(df).toMatch(/apt-get install[^\n]*bubblewrap/);
    for (const name of ['worker', 'scheduler']) {
      // A seccomp profile of our own (not unconfined), and /proc unmasked for the sandbox's procfs.
      expect((services[name] as { security_opt?: string[] }).security_opt, name).toEqual([
        'seccomp=./deploy/seccomp-sandbox.json',
        'apparmor=unconfined',
        'systempaths=unconfined',
      ]);
    }
    // The committed profile is what scripts/seccomp-profile.mjs writes, and it keeps the dangerous calls out.
    const text = execFileSync(
      process.execPath,
      ['--input-type=module', '-e', "process.stdout.write((await import('./scripts/seccomp-profile.mjs')).text)"],
      { cwd: ROOT, encoding: 'utf8' },
    );
    expect(
      read('deploy/seccomp-sandbox.json'),
      'deploy/seccomp-sandbox.json is stale: node scripts/seccomp-profile.mjs',
    ).toBe(text);
    const profile = JSON.parse(text) as { defaultAction: string; syscalls: { names: string[]; action: string }[] };
    expect(profile.defaultAction).toBe('SCMP_ACT_ERRNO');
    const allowed = new Set(profile.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW').flatMap((r) => r.names));
    for (const needed of ['unshare', 'mount', 'pivot_root', 'clone', 'setns', 'seccomp'])
      expect(allowed.has(needed), needed).toBe(true);
    for (const denied of [
      'ptrace',
      'process_vm_readv',
      'bpf',
      'perf_event_open',
      'kexec_load',
      'init_module',
      'keyctl',
      'add_key',
      'userfaultfd',
      'io_uring_setup',
      'open_by_handle_at',
    ])
      expect(allowed.has(denied), denied).toBe(false);
    // The API runs no sandboxes: it keeps Docker's default profiles.
    expect((services.api as { security_opt?: string[] }).security_opt).toBeUndefined();
    expect(composeConfig().supervisor.osLayer).toBe('required');
  });
});
