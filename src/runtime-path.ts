import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** The directory holding the package.json above `file`. */
export function projectRoot(file: string): string {
  let dir = path.dirname(file);
  while (!existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
}

/**
 * Absolute path of a compiled module that must run as its own thread or process (the sandbox
 * entry, the CLI, a benchmark processor). When the caller itself runs from TypeScript sources
 * (vitest, tsx), the file is taken from the build output, which `npm test` builds first: `dist/`
 * for the product in `src/`, `build/` for the tooling beside it (bench, chaos, test servers).
 * Threads start from plain JS, so spawning costs no loader.
 */
export function compiledPath(callerUrl: string, relative: string): string {
  const callerFile = fileURLToPath(callerUrl);
  const target = path.resolve(path.dirname(callerFile), relative);
  if (!callerFile.endsWith('.ts')) return target;
  const root = projectRoot(callerFile);
  const src = path.join(root, 'src');
  if (target.startsWith(src + path.sep)) return path.join(root, 'dist', path.relative(src, target));
  return path.join(root, 'build', path.relative(root, target));
}
