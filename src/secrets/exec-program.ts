import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, lstat, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { errnoCode, toError } from '../errors.js';

/** One program of the `exec` provider, as configured under `secrets.exec.<name>`. */
export interface ExecProgram {
  /** The name under `secrets.exec`, sent to the program as `provider`. */
  name: string;
  /** Absolute path, run without a shell or a PATH lookup. */
  command: string;
  args: readonly string[];
  /** Variables passed from the supervisor's environment (those that are set); nothing else is. */
  passEnv: readonly string[];
  /** Fixed variables (non-secret settings), set after `passEnv`. */
  env: Readonly<Record<string, string>>;
  timeoutMs: number;
  /** stdout and stderr together; past it the program is killed. */
  maxOutputBytes: number;
  jsonOnly: boolean;
  allowSymlinkCommand: boolean;
  /** When not empty, the program (after symlinks) must lie inside one of these. */
  trustedDirs: readonly string[];
}

/** Why a program is not run, or why a run failed; `retryable` when another try can help. */
export class ExecProgramError extends Error {
  override name = 'ExecProgramError';
  constructor(
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
  }
}

/** Writable by group or others, and not protected by the sticky bit (where only an entry's owner may rename it). */
const openForWriting = (mode: number, isDir: boolean): boolean => (mode & 0o022) !== 0 && !(isDir && mode & 0o1000);

function ownerProblem(uid: number): string | null {
  const me = process.getuid?.() ?? 0;
  return uid === 0 || uid === me ? null : `owned by uid ${uid}, neither root nor this process's user (uid ${me})`;
}

/** Every directory above `file`, nearest first. */
function ancestors(file: string): string[] {
  const out: string[] = [];
  for (let d = path.dirname(file); ; d = path.dirname(d)) {
    out.push(d);
    if (d === path.dirname(d)) return out;
  }
}

/**
 * The checks before each run: an absolute path; not a symlink (unless `allowSymlinkCommand`, then
 * its target is checked, and must lie in `trustedDirs` when given); a regular, executable file;
 * neither it nor any directory above it writable by group or others (a sticky directory such as
 * /tmp excepted) or owned by anyone but root or this user. Whoever could change the program could
 * read every secret it serves. Returns the path to run (the symlink's target when allowed).
 */
export async function checkProgram(p: ExecProgram): Promise<string> {
  const at = `secrets.exec.${p.name}.command (${p.command})`;
  const refuse = (why: string, fix: string): never => {
    throw new ExecProgramError(`${at} ${why}. Fix: ${fix}.`, false);
  };
  if (!path.isAbsolute(p.command))
    refuse('is not an absolute path', 'give the full path; there is no shell or PATH lookup');
  let link;
  try {
    link = await lstat(p.command);
  } catch (err) {
    return refuse(
      errnoCode(err) === 'ENOENT' ? 'does not exist' : `cannot be read (${toError(err).message})`,
      'install the program there or correct the path',
    );
  }
  if (link.isSymbolicLink() && !p.allowSymlinkCommand)
    refuse(
      'is a symlink, which someone could repoint',
      `give the real path (${await realpath(p.command).catch(() => 'its target')}), or set allowSymlinkCommand with trustedDirs for a package manager's shims`,
    );
  // Where the path really leads, also when a directory on it is a symlink (/opt/x/bin → /srv/shared):
  // the checks below cover that place and every directory above it, and that is what is run.
  const file = await realpath(p.command).catch((err: unknown) =>
    refuse(`cannot be resolved (${toError(err).message})`, 'repair the path or the links on it'),
  );
  const inside = (dir: string): boolean => {
    const rel = path.relative(dir, file);
    return rel !== '..' && !rel.startsWith(`..${path.sep}`);
  };
  if (p.trustedDirs.length && !p.trustedDirs.some(inside))
    refuse(
      `resolves to ${file}, outside trustedDirs (${p.trustedDirs.join(', ')})`,
      'install it there or extend trustedDirs',
    );
  const st = await stat(file);
  if (!st.isFile()) refuse('is not a regular file', 'point it at the program itself');
  if (openForWriting(st.mode, false))
    refuse(
      `is writable by ${st.mode & 0o002 ? 'everyone' : 'its group'} (mode ${(st.mode & 0o7777).toString(8)})`,
      `chmod go-w ${file}`,
    );
  const owner = ownerProblem(st.uid);
  if (owner) refuse(`is ${owner}`, `chown it to root (or this user)`);
  try {
    await access(file, constants.X_OK);
  } catch {
    refuse('is not executable by this user', `chmod +x ${file}`);
  }
  // Both the path as written and where it leads: a symlinked ancestor (/bin → /usr/bin) sits in a
  // directory too.
  for (const dir of new Set([...ancestors(p.command), ...ancestors(file)])) {
    const d = await stat(dir);
    if (openForWriting(d.mode, true))
      refuse(
        `lies in ${dir}, which is writable by ${d.mode & 0o002 ? 'everyone' : 'its group'} (mode ${(d.mode & 0o7777).toString(8)}): anyone there could swap the program`,
        `chmod go-w ${dir}, or install the program elsewhere`,
      );
    const dirOwner = ownerProblem(d.uid);
    if (dirOwner)
      refuse(`lies in ${dir}, which is ${dirOwner}`, 'install the program in a directory root or this user owns');
  }
  return file;
}

export interface ProgramRun {
  /** Bytes of their own (not Node's pool); the caller zero-fills them. */
  stdout: Buffer;
  stderr: Buffer;
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Kills the program's whole process group (it leads one of its own); one already gone is fine. */
function killGroup(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch (err) {
    if (errnoCode(err) !== 'ESRCH') throw err;
  }
}

function joinZeroing(chunks: Buffer[], total: number): Buffer {
  const out = Buffer.alloc(total);
  let at = 0;
  for (const c of chunks) {
    c.copy(out, at);
    at += c.length;
    c.fill(0);
  }
  chunks.length = 0;
  return out;
}

/**
 * Runs `file` with no shell, `input` on its stdin, in a process group of its own. Past `timeoutMs`
 * or `maxOutputBytes` (stdout and stderr together) the group is killed and the run fails; when the
 * program exits, whatever it left running in its group is killed too. Resolves once its pipes have
 * closed, so nothing of the run is left.
 */
export function runProgram(
  file: string,
  p: ExecProgram,
  input: string,
  env: Record<string, string>,
): Promise<ProgramRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, [...p.args], {
      cwd: path.dirname(file),
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
      shell: false,
      windowsHide: true,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    let failure: ExecProgramError | null = null;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    const wipe = (): void => {
      for (const c of [...out, ...err]) c.fill(0);
      out.length = 0;
      err.length = 0;
    };
    const fail = (e: ExecProgramError): void => {
      if (failure) return;
      failure = e;
      killGroup(child.pid);
      wipe();
      // The pipes close once the group is dead; a process stuck in the kernel must not hold the job.
      setTimeout(() => finish(), 2000).unref();
    };
    const timer = setTimeout(
      () =>
        fail(
          new ExecProgramError(
            `timed out after ${p.timeoutMs} ms; its process group was killed. Fix: raise secrets.exec.${p.name}.timeoutMs, or find why it hangs (waiting for a prompt, an unlock, the network?)`,
            true,
          ),
        ),
      p.timeoutMs,
    );
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (failure) {
        wipe();
        reject(failure);
      } else
        resolve({
          stdout: joinZeroing(out, outBytes),
          stderr: joinZeroing(err, errBytes),
          code: exit?.code ?? null,
          signal: exit?.signal ?? null,
        });
    };
    const take =
      (into: Buffer[], count: (n: number) => void) =>
      (chunk: Buffer): void => {
        if (failure) {
          chunk.fill(0);
          return;
        }
        count(chunk.length);
        into.push(chunk);
        if (outBytes + errBytes > p.maxOutputBytes)
          fail(
            new ExecProgramError(
              `printed more than ${p.maxOutputBytes} bytes (stdout and stderr together) and was killed. Fix: make it print only the answer, or raise secrets.exec.${p.name}.maxOutputBytes`,
              false,
            ),
          );
      };
    child.stdout.on(
      'data',
      take(out, (n) => (outBytes += n)),
    );
    child.stderr.on(
      'data',
      take(err, (n) => (errBytes += n)),
    );
    child.on('error', (e) => {
      fail(new ExecProgramError(`could not be started: ${e.message}`, true));
      finish();
    });
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      // Anything it left behind in its group goes with it.
      killGroup(child.pid);
    });
    child.on('close', finish);
    // A program that answers without reading its stdin (`op read …`) closes it early: not an error.
    child.stdin.on('error', (e) => {
      if (errnoCode(e) !== 'EPIPE' && errnoCode(e) !== 'ERR_STREAM_DESTROYED')
        fail(new ExecProgramError(`could not be given its request: ${e.message}`, true));
    });
    child.stdin.end(input);
  });
}
