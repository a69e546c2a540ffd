import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';

/**
 * A credential from the environment: `NAME`, or the contents of the file named by `NAME_FILE`
 * (the Docker/Kubernetes secrets convention). Its own module, so that reading one does not load a
 * backend SDK.
 */
export function requireEnv(name: string, what: string): string {
  const file = process.env[`${name}_FILE`];
  const v = file ? readFileSync(file, 'utf8').trim() : process.env[name];
  if (!v)
    throw new ConfigError(
      `${what} needs the environment variable ${name} (or ${name}_FILE). Fix: export ${name}=… (never put credentials in the config file).`,
    );
  return v;
}
