/**
 * `npm run bench`'s API process: the API role exactly as `fleet start --role api` runs it (same
 * config, Redis user, middleware, metrics), plus one no-op route: `POST /bench/noop` parses the
 * JSON body, checks the Bearer token and answers 202, the framework's own ceiling in the same
 * server. Sends `{ apiUrl }` to its parent once listening; SIGTERM stops it.
 */
import express from 'express';
import { startFleet } from '../src/app.js';
import { loadConfig } from '../src/config/load.js';
import { makeLogger } from '../src/observability/logger.js';

const [configPath] = process.argv.slice(2);
const token = process.env.FLEET_BENCH_TOKEN ?? '';
const config = await loadConfig(configPath ? { path: configPath } : {});
const fleet = await startFleet({
  config,
  role: 'api',
  logger: makeLogger({ level: 'warn' }),
  apiMount: (app) =>
    app.post('/bench/noop', express.json(), (req, res) => {
      if (req.get('authorization') !== `Bearer ${token}`) res.status(401).end();
      else res.status(202).json({ id: 'noop.0', type: 'noop' });
    }),
});
process.send?.({ apiUrl: fleet.apiUrl });
process.on('SIGTERM', () => void fleet.release().then(() => process.exit(0)));
