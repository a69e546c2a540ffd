/**
 * What a process sandbox is started with: the Node permission-model flags, the bubblewrap
 * namespaces and mounts (the OS layer), and the checks that refuse to start one whose processor
 * tree leaks outside itself. Pure functions plus a one-time probe, so each piece is testable.
 */
import { execFile } from 'node:child_process';
import http from 'node:http';
import { lstatSync, readdirSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { ProcessorLoadError, errnoCode, fieldOf } from '../errors.js';
import { CHANNEL_ENV, CHANNEL_FD3 } from './channel.js';

/** Where a sandbox's private temp dir, and its egress socket, appear inside the OS layer. */
export const SANDBOX_TMP = '/tmp';
export const SANDBOX_EGRESS_SOCKET = '/run/fleet/egress.sock';
/** Where the fleet egress CA's certificate appears inside a sandbox (types with injected secrets). */
export const SANDBOX_CA_CERT = '/run/fleet/ca.pem';
/** The port the in-sandbox forwarder listens on (its own network namespace, so no clash). */
export const SANDBOX_PROXY_PORT = 3128;

export type Egress = 'none' | 'any' | readonly string[];

/** Whether the OS layer (Linux namespaces through bubblewrap) works here, and why not. */
export interface OsLayer {
  available: boolean;
  /** Why it is not available, and how to enable it. Empty when available. */
  reason: string;
  bwrapPath: string;
}

/** The layers a sandbox runs behind, in the order a hostile processor meets them. */
export const SANDBOX_LAYERS = [
  'thread',
  'process',
  'permission-model',
  'namespaces',
  'egress-proxy',
  'cgroup',
  'rlimits',
  'seccomp',
] as const;
export type SandboxLayer = (typeof SANDBOX_LAYERS)[number];

/**
 * Node accepts `--allow-net` from 25 on; before that the permission model does not cover the
 * network at all, so only the OS layer stops connections.
 */
export const PERMISSION_MODEL_COVERS_NETWORK = process.allowedNodeEnvironmentFlags.has('--allow-net');

/** Node 24+ has `http.setGlobalProxyFromEnv()`: proxy settings can be applied on first use. */
const LAZY_PROXY = typeof fieldOf(http, 'setGlobalProxyFromEnv') === 'function';

let probed: Promise<OsLayer> | null = null;

/** Tries bubblewrap once per process: a sandbox with every namespace that runs `true`. */
export function probeOsLayer(setting: 'auto' | 'required' | 'off', bwrapPath = 'bwrap'): Promise<OsLayer> {
  if (setting === 'off') return Promise.resolve({ available: false, reason: 'supervisor.osLayer is "off"', bwrapPath });
  if (process.platform !== 'linux') {
    return Promise.resolve({
      available: false,
      reason: `namespaces are Linux-only (this is ${process.platform}); sandboxes run under the permission model alone. Fix: run workers on Linux (the Docker image does).`,
      bwrapPath,
    });
  }
  probed ??= new Promise<OsLayer>((resolve) => {
    // The same shape of sandbox a job gets (a fresh /proc, /dev, a size-capped tmpfs): what the
    // probe reports is what jobs will meet. Docker, for one, lets bubblewrap create namespaces but
    // masks paths under /proc, and the kernel then refuses a fresh procfs.
    const args = [...sandboxShape(1), 'true'];
    execFile(bwrapPath, args, { timeout: 5000, env: {} }, (err, _stdout, stderr) => {
      if (!err) return resolve({ available: true, reason: '', bwrapPath });
      const said = String(stderr).trim() || err.message;
      const why =
        errnoCode(err) === 'ENOENT'
          ? `${bwrapPath} not found. Fix: apt-get install bubblewrap (Debian/Ubuntu), dnf install bubblewrap (Fedora), or set supervisor.bwrapPath.`
          : /mount proc|proc on/i.test(said)
            ? `${bwrapPath} creates namespaces but cannot mount a fresh /proc (${said}): the container masks paths under /proc. Fix: run the worker with security_opt systempaths=unconfined (Docker; Kubernetes: procMount: Unmasked with user namespaces), see docs/operations.md#deploy.`
            : `${bwrapPath} cannot create namespaces here (${said}). Fix: allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; Ubuntu 24.04+: an AppArmor profile for bwrap), or in Docker run the worker with the seccomp profile in deploy/ and apparmor=unconfined, systempaths=unconfined (see docs/operations.md#deploy).`;
      resolve({ available: false, reason: why, bwrapPath });
    });
  });
  return probed;
}

/**
 * The namespaces, identity and mounts every sandbox gets, the OS-layer probe's too (so what the
 * probe reports is what jobs meet). The private /tmp comes before any bind: bubblewrap mounts in
 * order, and a processor tree that lives under /tmp (a CI checkout) must be bound on top of it.
 */
function sandboxShape(tmpSizeMb: number): string[] {
  return [
    '--unshare-all', // user, PID, mount, IPC, UTS, cgroup and network namespaces
    '--die-with-parent',
    '--new-session',
    ...(process.getuid?.() === 0 ? ['--cap-drop', 'ALL'] : []),
    '--uid',
    '65534',
    '--gid',
    '65534',
    '--hostname',
    'sandbox',
    ...systemMounts(),
    '--proc',
    '/proc',
    '--dev',
    '/dev',
    '--size',
    String(tmpSizeMb * 1024 * 1024),
    '--tmpfs',
    SANDBOX_TMP,
  ];
}

/** The system directories every sandbox needs read-only to start Node (its shared libraries). */
let mounts: string[] | null = null;
function systemMounts(): string[] {
  mounts ??= readSystemMounts();
  return mounts;
}

function readSystemMounts(): string[] {
  const out: string[] = ['--ro-bind', '/usr', '/usr'];
  // Debian/Ubuntu merged /usr: /lib, /lib64, /bin are links into /usr.
  for (const d of ['/lib', '/lib64', '/lib32', '/bin', '/sbin']) {
    try {
      const st = lstatSync(d);
      if (st.isSymbolicLink()) out.push('--symlink', readlinkRelative(d), d);
      else if (st.isDirectory()) out.push('--ro-bind', d, d);
    } catch {
      /* absent here */
    }
  }
  return out;
}

function readlinkRelative(link: string): string {
  return path.relative(path.dirname(link), realpathSync(link));
}

/** Node's own files: the binary (and, for builds that ship it, its lib dir). */
function nodeRuntimePaths(): string[] {
  return [realpathSync(process.execPath)];
}

/** Every `node_modules` directory a module in `dir` resolves packages from. */
export function nodeModulesDirs(dir: string): string[] {
  const out: string[] = [];
  for (let d = dir; ; d = path.dirname(d)) {
    const nm = path.join(d, 'node_modules');
    try {
      if (lstatSync(nm).isDirectory()) out.push(realpathSync(nm));
    } catch {
      /* none here */
    }
    if (path.dirname(d) === d) return out;
  }
}

/**
 * Refuses a processor tree that reaches outside itself through a symlink (a link to `~/.ssh` or
 * the fleet's data dir would otherwise be readable through an allowed path). Bounded walk.
 */
export function assertNoEscapingLinks(root: string, allowed: readonly string[], maxEntries = 20_000): void {
  const inside = (p: string): boolean => allowed.some((a) => p === a || p.startsWith(a + path.sep));
  let seen = 0;
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      if (name === 'node_modules') continue; // packages: listed separately, read-only, no secrets
      if (++seen > maxEntries)
        throw new ProcessorLoadError(
          `processor directory ${root} holds more than ${maxEntries} entries. Fix: point the processor at a directory of its own (a package), not a project root.`,
        );
      const p = path.join(dir, name);
      const st = lstatSync(p);
      if (st.isSymbolicLink()) {
        let target: string;
        try {
          target = realpathSync(p);
        } catch {
          continue; // dangling: reads nothing
        }
        if (!inside(target))
          throw new ProcessorLoadError(
            `processor directory ${root} holds a symlink that leaves it: ${p} -> ${target}. Fix: copy what it needs into the directory, or list the target in readPaths.`,
          );
      } else if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
}

export interface ProcessSandboxSpec {
  entry: string;
  processorPath: string;
  /** The fleet egress CA certificate the sandbox trusts (types with injected secrets). */
  caCertFile?: string;
  /** Read-only paths besides the processor's directory (resolved). */
  readPaths: readonly string[];
  /** The sandbox's private temp dir on the host (created by the caller, removed with the sandbox). */
  tmpDir: string;
  tmpSizeMb: number;
  maxOldGenerationSizeMb: number;
  egress: Egress;
  /** The egress proxy's Unix socket on the host (OS layer, egress not "none"). */
  egressSocket: string | null;
  /** The proxy URL the sandbox's HTTP clients use (egress not "none"). */
  proxyUrl: string | null;
  osLayer: OsLayer;
  /** Paths no sandbox may read (the fleet's data dir: master key, dev token, embedded Redis). */
  forbiddenPaths: readonly string[];
  /** Only `npm run bench` turns this off, to price the permission model alone. @defaultValue true */
  permissionModel?: boolean;
  /** The Node binary to run (without the OS layer, one the sandbox's uid can execute). @defaultValue process.execPath */
  nodePath?: string;
  /** The descriptor (in the child) bubblewrap reads the seccomp filter from (OS layer). */
  seccompFd?: number;
}

/** The readable tree of a sandbox: its processor directory, packages, the sandbox runtime and Node. */
export function readableRoots(spec: Pick<ProcessSandboxSpec, 'entry' | 'processorPath' | 'readPaths'>): string[] {
  const processorDir = realpathSync(path.dirname(spec.processorPath));
  // The sandbox runtime: the compiled dist/ tree the entry lives in (no config, no data).
  const runtimeDir = realpathSync(path.dirname(path.dirname(spec.entry)));
  const roots = [
    processorDir,
    runtimeDir,
    ...spec.readPaths.map((p) => realpathSync(p)),
    ...nodeModulesDirs(processorDir),
  ];
  return [...new Set(roots)];
}

/** The command line of one process sandbox: `bwrap … node …` with the OS layer, `node …` without. */
/** How long a checked processor tree is trusted before it is walked again. */
const TREE_CHECK_TTL_MS = 30_000;
const checkedTrees = new Map<string, { roots: string[]; at: number }>();

/**
 * The readable roots of a sandbox, after refusing a tree that reaches the data dir or leaves
 * itself through a symlink. The walk is synchronous, and `job` isolation starts a sandbox per job
 * on the supervisor's main thread, so a tree that passed is trusted for {@link TREE_CHECK_TTL_MS}
 * (sandboxes cannot write to it; an operator's change is seen at the next walk).
 */
function checkedRoots(spec: ProcessSandboxSpec): string[] {
  const key = JSON.stringify([spec.entry, spec.processorPath, spec.readPaths, spec.forbiddenPaths]);
  const cached = checkedTrees.get(key);
  if (cached && Date.now() - cached.at < TREE_CHECK_TTL_MS) return cached.roots;
  const roots = readableRoots(spec);
  for (const f of spec.forbiddenPaths) {
    const root = roots.find((r) => f === r || f.startsWith(r + path.sep));
    if (root)
      throw new ProcessorLoadError(
        `the sandbox of ${spec.processorPath} would be able to read ${f} (through ${root}). Fix: keep processors in a directory of their own, away from dataDir.`,
      );
  }
  assertNoEscapingLinks(realpathSync(path.dirname(spec.processorPath)), roots);
  checkedTrees.set(key, { roots, at: Date.now() });
  return roots;
}

export function processSandboxCommand(spec: ProcessSandboxSpec): {
  command: string;
  args: string[];
  env: Record<string, string>;
  layers: SandboxLayer[];
  lazyProxy: boolean;
} {
  const roots = checkedRoots(spec);
  const os = spec.osLayer.available;
  const tmpInside = os ? SANDBOX_TMP : spec.tmpDir;
  const networked = spec.egress !== 'none';
  const permission =
    spec.permissionModel === false
      ? []
      : [
          '--permission',
          ...roots.map((r) => `--allow-fs-read=${r}`),
          `--allow-fs-write=${tmpInside}`,
          `--allow-fs-read=${tmpInside}`,
          ...(spec.caCertFile ? [`--allow-fs-read=${os ? SANDBOX_CA_CERT : spec.caCertFile}`] : []),
          // The in-sandbox forwarder reaches the egress proxy's socket (only the network
          // namespace's loopback and that socket exist there).
          ...(networked && PERMISSION_MODEL_COVERS_NETWORK ? ['--allow-net'] : []),
        ];
  const nodeArgs = [
    ...permission,
    '--disable-sigusr1',
    `--max-old-space-size=${spec.maxOldGenerationSizeMb}`,
    '--max-semi-space-size=16',
    '--stack-size=984',
    ...(/\.[cm]?ts$/.test(spec.processorPath) && !process.features.typescript ? ['--experimental-strip-types'] : []),
    '--no-warnings',
    spec.entry,
  ];
  const env: Record<string, string> = {
    NODE_ENV: process.env.NODE_ENV ?? 'production',
    TMPDIR: tmpInside,
    HOME: tmpInside,
    [CHANNEL_ENV]: CHANNEL_FD3,
  };
  // Injected secrets: the sandbox trusts the fleet egress CA (its certificate only; the key stays
  // in the supervisor's data dir, which no sandbox can read).
  const caInside = spec.caCertFile ? (os ? SANDBOX_CA_CERT : spec.caCertFile) : null;
  if (caInside) env.NODE_EXTRA_CA_CERTS = caInside;
  // Node ≥ 24 can switch its HTTP clients to the proxy at run time: the sandbox entry does it on
  // the first connection, so a sandbox that never connects does not pay ~40 ms at start-up for
  // loading the proxy support. Node 22 reads NODE_USE_ENV_PROXY at start-up only.
  const lazyProxy = networked && LAZY_PROXY;
  if (networked && spec.proxyUrl) {
    const proxy = spec.proxyUrl;
    Object.assign(
      env,
      { HTTP_PROXY: proxy, HTTPS_PROXY: proxy, http_proxy: proxy, https_proxy: proxy },
      lazyProxy ? {} : { NODE_USE_ENV_PROXY: '1' },
    );
  }
  const node = spec.nodePath ?? realpathSync(process.execPath);
  const layers: SandboxLayer[] = spec.permissionModel === false ? ['process'] : ['process', 'permission-model'];
  if (!os) return { command: node, args: nodeArgs, env, layers, lazyProxy };

  layers.push('namespaces');
  if (networked) layers.push('egress-proxy');
  if (spec.seccompFd !== undefined) layers.push('seccomp');
  const binds: string[] = [];
  for (const r of [...roots, ...nodeRuntimePaths()]) binds.push('--ro-bind', r, r);
  const args = [
    ...sandboxShape(spec.tmpSizeMb),
    ...binds,
    ...(networked && spec.egressSocket
      ? ['--dir', '/run/fleet', '--bind', spec.egressSocket, SANDBOX_EGRESS_SOCKET]
      : []),
    ...(spec.caCertFile ? ['--ro-bind', spec.caCertFile, SANDBOX_CA_CERT] : []),
    '--chdir',
    SANDBOX_TMP,
    // Loaded last, just before Node starts: bubblewrap's own set-up needs what the filter denies.
    ...(spec.seccompFd !== undefined ? ['--seccomp', String(spec.seccompFd)] : []),
    '--',
    node,
    ...nodeArgs,
  ];
  return { command: spec.osLayer.bwrapPath, args, env, layers, lazyProxy };
}
