import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { FleetConfig } from './config/resolve.js';
import { FLEET_PRODUCER_NAMES } from './config/schema.js';
import { tlsVerificationOff } from './config/tls.js';
import { FleetEventBus } from './events.js';
import type { Logger } from './observability/logger.js';
import { ensureDevToken, type ProducerIdentity } from './api/auth.js';
import type { Producer } from './producers/producer.js';
import type { Server } from './api/api-server.js';
import { checkRedisSettings, connectRedis, redactUrl, waitForRedis } from './redis/connection.js';
import { startEmbeddedRedis, type EmbeddedRedis } from './redis/embedded-redis.js';
import {
  embeddedUsersFile,
  ensureEmbeddedUsers,
  readEmbeddedUsers,
  RedisAccess,
  roleCredentialsFromEnv,
  rolePasswordEnv,
  type RedisRole,
} from './redis/acl.js';
import type { Supervisor } from './workers/supervisor.js';
import { closeProviders, makeProvider, makeProviders } from './secrets/providers.js';
import { FleetMetrics } from './observability/metrics.js';
import type { RotationService } from './rotation/rotation-service.js';
import { startMetricsServer } from './observability/metrics-server.js';

export type Role = 'api' | 'worker' | 'scheduler' | 'all';
export const ROLES: readonly Role[] = ['api', 'worker', 'scheduler', 'all'];

export interface FleetProcess {
  redisUrl: string;
  apiUrl: string | null;
  /** The supervisor's own /metrics, /healthz, /readyz server. */
  metricsUrl: string | null;
  metrics: FleetMetrics;
  supervisor: Supervisor | null;
  rotation: RotationService | null;
  producer: Producer | null;
  events: FleetEventBus;
  /** Stops everything this process started, in reverse order. */
  release(): Promise<void>;
}

/** Where a running embedded Redis leaves its URL, so `fleet enqueue`/`status` find it. */
export function embeddedUrlFile(config: FleetConfig): string {
  return path.join(config.dataDir, 'redis.url');
}

/** The Redis URL for CLI commands: config/`REDIS_URL`, else a running embedded server's. */
export function discoverRedisUrl(config: FleetConfig): string | undefined {
  if (config.redis.url) return config.redis.url;
  const f = embeddedUrlFile(config);
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined;
}

/**
 * How each component of this process reaches Redis: the URL (config/`REDIS_URL`, else a running
 * embedded server's), with each role's credentials from `FLEET_REDIS_<ROLE>_PASSWORD[_FILE]` or,
 * for the embedded server, the users `npm start` generated in dataDir.
 */
export function discoverRedisAccess(config: FleetConfig): RedisAccess | undefined {
  const url = discoverRedisUrl(config);
  if (!url) return undefined;
  const embedded = config.redis.url ? null : readEmbeddedUsers(config.dataDir);
  return new RedisAccess(url, { ...embedded?.roles, ...roleCredentialsFromEnv() }, embedded?.admin ?? null);
}

/** Roles each fleet role's components connect as. */
const REDIS_ROLES_OF: Record<Role, readonly [RedisRole, ...RedisRole[]]> = {
  api: ['api', 'ops'],
  worker: ['worker'],
  scheduler: ['scheduler', 'retention'],
  all: ['api', 'ops', 'worker', 'scheduler', 'retention'],
};

/**
 * Starts one process of the fleet in the given role. With no Redis configured it runs a private
 * `redis-server` under `dataDir` (the embedded default for `npm start`).
 */
export async function startFleet(options: {
  config: FleetConfig;
  role: Role;
  logger: Logger;
  /** Overrides supervisor.metricsPort (`--metrics-port`, `FLEET_METRICS_PORT`); 0 picks a free port. */
  metricsPort?: number;
  /** Extra routes on the API's Express app, before its own (a custom health check; `npm run bench`'s no-op route). */
  apiMount?: (app: import('express').Express) => void;
}): Promise<FleetProcess> {
  const { config, role, logger } = options;
  const verificationOff = tlsVerificationOff();
  if (verificationOff) logger.error(`${verificationOff.reason}. Fix: ${verificationOff.fix}.`);
  const events = new FleetEventBus();
  const metrics = new FleetMetrics();
  metrics.attach(events);
  metrics.declareJobTypes(config.jobTypes.values());
  const cleanups: (() => Promise<void>)[] = [];
  const release = async (): Promise<void> => {
    for (const c of cleanups.reverse())
      await c().catch((err: unknown) => logger.error('cleanup failed', { error: String(err) }));
  };
  try {
    let access: RedisAccess;
    if (!config.redis.url) {
      const dataDir = path.join(config.dataDir, 'redis');
      // One ACL user per role, passwords generated once into dataDir (0600); the default user is off.
      const users = ensureEmbeddedUsers(config.dataDir);
      const embedded: EmbeddedRedis = await startEmbeddedRedis({
        dataDir,
        persistent: true,
        acl: { prefix: config.redis.prefix, users },
      });
      access = new RedisAccess(embedded.url, { ...users.roles, ...roleCredentialsFromEnv() }, users.admin);
      writeFileSync(embeddedUrlFile(config), `${embedded.url}\n`);
      logger.info(
        `no REDIS_URL set: started a private redis-server at ${embedded.url} (data in ${dataDir}, one ACL user per role, passwords in ${embeddedUsersFile(config.dataDir)}); set REDIS_URL to use your own`,
      );
      cleanups.push(async () => {
        rmSync(embeddedUrlFile(config), { force: true });
        await embedded.release();
      });
    } else {
      access = new RedisAccess(config.redis.url, roleCredentialsFromEnv());
      logger.info(`using Redis at ${redactUrl(config.redis.url)}`);
      const missing = access.missingRoles(REDIS_ROLES_OF[role]);
      if (missing.length)
        logger.warn(
          `Redis roles ${missing.join(', ')} have no credentials of their own (${missing.map(rolePasswordEnv).join(', ')}): they connect with REDIS_URL's identity. For production run \`fleet redis setup\` and give each role its password.`,
        );
    }
    const redisUrl = access.url;
    const probe = connectRedis(access.admin ? access.adminUrl() : access.urlFor(REDIS_ROLES_OF[role][0]), 'worker', {
      tls: config.redis.tls,
    });
    probe.on('error', () => undefined);
    try {
      await waitForRedis(probe);
      await checkRedisSettings(probe, (msg) => logger.warn(msg));
    } finally {
      probe.disconnect();
    }

    let supervisor: Supervisor | null = null;
    let metricsUrl: string | null = null;
    if (role === 'worker' || role === 'all') {
      // The connection is opened here and handed in (the supervisor does not build its own).
      const supRedis = connectRedis(access.urlFor('worker'), 'worker', { tls: config.redis.tls });
      supRedis.on('error', (err) =>
        logger.warn('redis connection error (worker); reconnecting', { error: err.message }),
      );
      cleanups.push(async () => supRedis.disconnect());
      // So are the secret backends, opened with the supervisor's identity.
      const supProviders = await makeProviders(config, { redis: supRedis, logger });
      cleanups.push(() => closeProviders(supProviders));
      const { Supervisor } = await import('./workers/supervisor.js');
      const sup = new Supervisor({
        config,
        redisUrl: access.urlFor('worker'),
        redis: supRedis,
        providers: supProviders,
        logger,
        events,
      });
      supervisor = sup;
      cleanups.push(() => sup.stop());
      await sup.start();
      metrics.onCollect(async () => {
        for (const t of sup.status().types) {
          for (const state of ['warm', 'busy', 'starting'] as const)
            metrics.sandboxes.labels(t.jobType, state).set(t[state]);
          metrics.concurrencyLimit.labels(t.jobType).set(t.concurrency);
          metrics.concurrencyInUse.labels(t.jobType).set(t.active);
        }
        for (const [type, counts] of Object.entries(await sup.queueCounts())) {
          for (const [state, n] of Object.entries(counts)) metrics.queueJobs.labels(type, state).set(n);
        }
      });
    }

    let rotation: RotationService | null = null;
    if (role === 'scheduler' || role === 'all') {
      const rotRedis = connectRedis(access.urlFor('scheduler'), 'worker', { tls: config.redis.tls });
      rotRedis.on('error', (err) =>
        logger.warn('redis connection error (scheduler); reconnecting', { error: err.message }),
      );
      cleanups.push(async () => rotRedis.disconnect());
      // Each role loads only its own parts: a worker never loads the rotation service, the API or Bull Board.
      const { RotationService } = await import('./rotation/rotation-service.js');
      const rot = new RotationService({
        config,
        redisUrl: access.urlFor('scheduler'),
        redis: rotRedis,
        openProvider: (kind) =>
          makeProvider(kind, config, {
            redis: rotRedis,
            logger: logger.scope({ component: 'rotation' }),
            vaultIdentity: 'rotator',
          }),
        retentionUrl: access.urlFor('retention'),
        events,
        logger,
      });
      rotation = rot;
      // Registered first: stop() also ends a start that failed half-way (it closes what it opened).
      cleanups.push(() => rot.stop());
      await rot.start();
      metrics.onCollect(async () => {
        for (const h of await rot.health()) {
          metrics.secretAge.labels(h.secret).set(h.ageSeconds ?? 0);
          metrics.exposureRisk.labels(h.secret).set(h.exposureRisk);
          metrics.rotationOverdue.labels(h.secret).set(h.overdue ? 1 : 0);
          if (h.rotation.lastSuccessAt) metrics.lastRotation.labels(h.secret).set(h.rotation.lastSuccessAt / 1000);
        }
      });
    }

    if (supervisor || rotation) {
      const sup = supervisor;
      const ready = async (): Promise<Record<string, string>> => ({
        ...(sup ? await sup.ready() : {}),
        ...(rotation ? { rotation: 'ok' } : {}),
      });
      const server = await startMetricsServer({
        metrics,
        host: config.supervisor.metricsHost,
        port: options.metricsPort ?? config.supervisor.metricsPort,
        ready,
      });
      metricsUrl = server.url;
      logger.info(`metrics on ${server.url}/metrics`);
      cleanups.push(() => server.release());
    }

    let apiUrl: string | null = null;
    let producer: Producer | null = null;
    if (role === 'api' || role === 'all') {
      const { Producer } = await import('./producers/producer.js');
      const api = new Producer({
        config,
        redis: access.urlFor('api'),
        name: FLEET_PRODUCER_NAMES.api,
        events,
        via: 'http',
      });
      producer = api;
      cleanups.push(() => api.close());
      // Bull Board builds its queues now; they must see a ready connection (see Producer#readyQueue).
      await waitForRedis(producer.redis);
      let producers: readonly ProducerIdentity[] = config.producers;
      if (producers.length === 0) {
        const dev = ensureDevToken(config.dataDir);
        producers = [dev.identity];
        logger.warn(
          `no producers configured: the API accepts the dev token in ${dev.tokenFile} (all job types). Configure producers before deploying.`,
        );
      }
      // Loaded only for the API role: a worker-only process does not pay for express.
      const { createApiApp } = await import('./api/http-api.js');
      const { listen } = await import('./api/api-server.js');
      // A read-only Bull Board reads through the ops role (it cannot write even if its read-only mode had a hole).
      let boardProducer: Producer | undefined;
      if (config.api.bullBoard.enabled && config.api.bullBoard.readOnly && access.hasRole('ops')) {
        const { Producer } = await import('./producers/producer.js');
        const board = new Producer({
          config,
          redis: access.urlFor('ops'),
          name: FLEET_PRODUCER_NAMES.board,
          dataKeys: null,
        });
        boardProducer = board;
        cleanups.push(() => board.close());
        await waitForRedis(board.redis);
      }
      const app = createApiApp({
        producer,
        producers,
        logger,
        metrics,
        ...(boardProducer ? { boardProducer } : {}),
        ...(options.apiMount ? { mount: options.apiMount } : {}),
      });
      const server: Server = await listen(app, config.api.host, config.api.port, config.api.tls);
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : config.api.port;
      apiUrl = `${config.api.tls.certFile ? 'https' : 'http'}://${config.api.host}:${port}`;
      logger.info(`API listening on ${apiUrl}`);
      cleanups.push(
        () =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeIdleConnections();
          }),
      );
    }
    return { redisUrl, apiUrl, metricsUrl, metrics, supervisor, rotation, producer, events, release };
  } catch (err) {
    await release();
    throw err;
  }
}
