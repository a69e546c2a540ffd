import { fileURLToPath } from 'node:url';
import path from 'node:path';

/**
 * Absolute path of a compiled module that must run as its own thread or process (the sandbox
 * entry, the CLI). When the caller itself runs from TypeScript sources (vitest, tsx), the file is
 * taken from `dist/`, which `npm test` builds first: threads start from plain JS, so spawning
 * costs no loader.
 */
export function compiledPath(callerUrl: string, relative: string): string {
  const callerFile = fileURLToPath(callerUrl);
  const target = path.resolve(path.dirname(callerFile), relative);
  if (!callerFile.endsWith('.ts')) return target;
  const srcRoot = callerFile.slice(0, callerFile.lastIndexOf(`${path.sep}src${path.sep}`) + 1);
  return path.join(srcRoot, 'dist', path.relative(path.join(srcRoot, 'src'), target));
}
