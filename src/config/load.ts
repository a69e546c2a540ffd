/** Finding and reading the config file (`.ts` through tsx, `.js`/`.mjs` imported, `.json` parsed), then resolving it. */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError, errorMessage, fieldOf } from '../errors.js';
import { resolveConfig, type FleetConfig } from './resolve.js';

const CONFIG_FILES = ['fleet.config.ts', 'fleet.config.js', 'fleet.config.mjs', 'fleet.config.json'];

/** Finds the config file: explicit path > `FLEET_CONFIG` > `fleet.config.{ts,js,mjs,json}` in `cwd`. */
export function findConfigFile(explicit?: string, cwd = process.cwd()): string {
  const chosen = explicit ?? process.env.FLEET_CONFIG;
  if (chosen) {
    const abs = path.resolve(cwd, chosen);
    if (!existsSync(abs))
      throw new ConfigError(
        `config file ${abs} does not exist (from ${explicit ? '--config' : 'FLEET_CONFIG'}). Fix: point it at your fleet.config.ts/.js/.json.`,
      );
    return abs;
  }
  for (const f of CONFIG_FILES) {
    const abs = path.join(cwd, f);
    if (existsSync(abs)) return abs;
  }
  throw new ConfigError(
    `no fleet config found in ${cwd}. Fix: create fleet.config.ts (see docs/configuration.md) or pass --config <path> / FLEET_CONFIG.`,
  );
}

/** Loads, validates and freezes the config file. `.ts` files are loaded through tsx. */
export async function loadConfig(options: { path?: string; cwd?: string } = {}): Promise<FleetConfig> {
  const file = findConfigFile(options.path, options.cwd);
  let raw: unknown;
  try {
    if (file.endsWith('.json')) {
      const { readFile } = await import('node:fs/promises');
      raw = JSON.parse(await readFile(file, 'utf8'));
    } else if (file.endsWith('.ts')) {
      const { tsImport } = await import('tsx/esm/api');
      raw = fieldOf(await tsImport(pathToFileURL(file).href, import.meta.url), 'default');
    } else {
      raw = fieldOf(await import(pathToFileURL(file).href), 'default');
    }
  } catch (err) {
    throw new ConfigError(`could not read config file ${file}: ${errorMessage(err)}`, { cause: err });
  }
  if (raw === undefined)
    throw new ConfigError(`config file ${file} has no default export. Fix: export default defineConfig({...}).`);
  return resolveConfig(raw, { baseDir: path.dirname(file), source: file });
}
