/**
 * The seccomp-BPF filter every process sandbox runs under (bubblewrap loads it with `--seccomp FD`
 * before it starts Node), written as readable code: what is denied and why, in one place, and a
 * small emitter of classic BPF. A V8 bug gives an attacker native code, and Node's permission
 * model then no longer applies; this filter, the namespaces and the cgroup still do.
 *
 * Denied calls fail with EPERM (`clone3` with ENOSYS, so libc falls back to `clone`, whose flags a
 * filter can read). Everything else is allowed: the namespaces decide what the allowed calls reach.
 * x86_64 only (the numbers below are its syscall table); on another architecture the filter is not
 * built and the supervisor says so.
 */

/** A denied call and why it is denied. */
interface Denial {
  nr: number;
  why: string;
}

/** x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
const DENIED: Record<string, Denial> = {
  ptrace: { nr: 101, why: 'reading and steering other processes' },
  process_vm_readv: { nr: 310, why: "reading another process's memory" },
  process_vm_writev: { nr: 311, why: "writing another process's memory" },
  kcmp: { nr: 312, why: 'comparing other processes’ kernel objects (a probe of their state)' },
  pidfd_getfd: { nr: 438, why: "taking another process's file descriptors" },
  process_madvise: { nr: 440, why: "advising on another process's memory" },
  io_uring_setup: { nr: 425, why: 'io_uring: a large kernel attack surface that bypasses syscall filtering' },
  io_uring_enter: { nr: 426, why: 'io_uring' },
  io_uring_register: { nr: 427, why: 'io_uring' },
  bpf: { nr: 321, why: 'loading BPF programs into the kernel' },
  perf_event_open: { nr: 298, why: 'performance counters: side channels and kernel attack surface' },
  userfaultfd: { nr: 323, why: 'stalling the kernel at will (a staple of kernel exploits)' },
  keyctl: { nr: 250, why: 'the kernel keyrings are not namespaced' },
  add_key: { nr: 248, why: 'the kernel keyrings are not namespaced' },
  request_key: { nr: 249, why: 'the kernel keyrings are not namespaced' },
  init_module: { nr: 175, why: 'loading kernel modules' },
  finit_module: { nr: 313, why: 'loading kernel modules' },
  delete_module: { nr: 176, why: 'unloading kernel modules' },
  kexec_load: { nr: 246, why: 'replacing the running kernel' },
  kexec_file_load: { nr: 320, why: 'replacing the running kernel' },
  unshare: { nr: 272, why: 'nested namespaces (a fresh user namespace regains capabilities inside it)' },
  setns: { nr: 308, why: 'entering other namespaces' },
  mount: { nr: 165, why: 'changing the mount namespace bubblewrap built' },
  umount2: { nr: 166, why: 'uncovering what bubblewrap mounted over' },
  pivot_root: { nr: 155, why: 'changing the root bubblewrap built' },
  chroot: { nr: 161, why: 'changing the root bubblewrap built' },
  open_tree: { nr: 428, why: 'the new mount API' },
  move_mount: { nr: 429, why: 'the new mount API' },
  fsopen: { nr: 430, why: 'the new mount API' },
  fsconfig: { nr: 431, why: 'the new mount API' },
  fsmount: { nr: 432, why: 'the new mount API' },
  fspick: { nr: 433, why: 'the new mount API' },
  mount_setattr: { nr: 442, why: 'the new mount API' },
  open_by_handle_at: { nr: 304, why: 'opening files by handle, around path checks' },
  name_to_handle_at: { nr: 303, why: 'file handles for open_by_handle_at' },
  acct: { nr: 163, why: 'process accounting (host-wide)' },
  swapon: { nr: 167, why: 'host swap' },
  swapoff: { nr: 168, why: 'host swap' },
  reboot: { nr: 169, why: 'host power' },
  syslog: { nr: 103, why: 'the kernel log' },
  quotactl: { nr: 179, why: 'host quotas' },
  lookup_dcookie: { nr: 212, why: 'kernel profiling' },
  settimeofday: { nr: 164, why: 'the host clock' },
  clock_settime: { nr: 227, why: 'the host clock' },
  adjtimex: { nr: 159, why: 'the host clock' },
  clock_adjtime: { nr: 305, why: 'the host clock' },
  iopl: { nr: 172, why: 'raw I/O ports' },
  ioperm: { nr: 173, why: 'raw I/O ports' },
  uselib: { nr: 134, why: 'obsolete loader entry point' },
  vhangup: { nr: 153, why: 'terminals' },
  personality: { nr: 135, why: 'execution domains (READ_IMPLIES_EXEC, no address randomization)' },
};

/**
 * Calls the kernel added after this filter was written are denied unless listed here: a filter that
 * names what it denies must not let through what it has never seen (`open_tree_attr`, 467, is a
 * mount call). 451 is the first number after the table above was last reviewed.
 */
const FIRST_UNREVIEWED = 451;
const NEWER_ALLOWED: Record<string, number> = {
  cachestat: 451,
  fchmodat2: 452,
  map_shadow_stack: 453,
  futex_wake: 454,
  futex_wait: 455,
  futex_requeue: 456,
  mseal: 462,
};

/** `clone3` takes its flags in memory a filter cannot read: ENOSYS, and libc uses `clone`. */
const CLONE3 = 435;
const CLONE = 56;
/** CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: a nested namespace. */
const CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000;
const SOCKET = 41;
const SOCKETPAIR = 53;
/** Socket families a sandbox needs: AF_UNIX (its channel, its forwarder), AF_INET, AF_INET6. */
const ALLOWED_FAMILIES = [1, 2, 10];

const AUDIT_ARCH_X86_64 = 0xc000003e;
/** The x32 ABI's calls carry this bit; none is allowed. */
const X32_SYSCALL_BIT = 0x40000000;

// Classic BPF (linux/filter.h, linux/seccomp.h).
const BPF_LD_W_ABS = 0x20;
const BPF_JEQ_K = 0x15;
const BPF_JGE_K = 0x35;
const BPF_JSET_K = 0x45;
const BPF_RET_K = 0x06;
const SECCOMP_RET_ALLOW = 0x7fff0000;
const SECCOMP_RET_ERRNO = 0x00050000;
const SECCOMP_RET_KILL_PROCESS = 0x80000000;
const EPERM = 1;
const ENOSYS = 38;
/** struct seccomp_data: nr (0), arch (4), instruction_pointer (8), args[6] (16 + 8·i, low word first). */
const OFF_NR = 0;
const OFF_ARCH = 4;
const offArg = (i: number): number => 16 + 8 * i;

type Insn = [code: number, jt: number, jf: number, k: number];

/** The names denied, with why: for documentation, `fleet doctor` and the tests. */
export function deniedSyscalls(): { name: string; nr: number; why: string }[] {
  return [
    ...Object.entries(DENIED).map(([name, d]) => ({ name, ...d })),
    { name: 'clone3', nr: CLONE3, why: 'flags unreadable by a filter (ENOSYS: libc falls back to clone)' },
    { name: 'clone (namespace flags)', nr: CLONE, why: 'nested namespaces' },
    { name: 'socket (families other than unix, inet, inet6)', nr: SOCKET, why: 'netlink, packet, vsock, …' },
    {
      name: `every call numbered ${FIRST_UNREVIEWED} or above but ${Object.keys(NEWER_ALLOWED).join(', ')}`,
      nr: FIRST_UNREVIEWED,
      why: 'calls newer than this filter (open_tree_attr, statmount, listmount, …) are denied until reviewed',
    },
  ];
}

/** Whether this machine's sandboxes can get the filter (the syscall numbers above are x86_64's). */
export function seccompSupported(): boolean {
  return process.platform === 'linux' && process.arch === 'x64';
}

/**
 * The filter as classic BPF: 8 bytes per instruction (u16 code, u8 jt, u8 jf, u32 k, native
 * little-endian), the format `bwrap --seccomp` reads from its descriptor.
 */
export function seccompProgram(): Buffer {
  const prog: Insn[] = [];
  const errno = (e: number): Insn => [BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | e];
  // A foreign architecture (i386 through int 0x80 has other numbers): killed outright.
  prog.push([BPF_LD_W_ABS, 0, 0, OFF_ARCH]);
  prog.push([BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64]);
  prog.push([BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS]);
  prog.push([BPF_LD_W_ABS, 0, 0, OFF_NR]);
  prog.push([BPF_JGE_K, 0, 1, X32_SYSCALL_BIT]);
  prog.push(errno(EPERM));
  // Each denied number: equal → EPERM.
  for (const d of Object.values(DENIED)) {
    prog.push([BPF_JEQ_K, 0, 1, d.nr]);
    prog.push(errno(EPERM));
  }
  prog.push([BPF_JEQ_K, 0, 1, CLONE3]);
  prog.push(errno(ENOSYS));
  // Numbers past the reviewed table: allowed only when listed as reviewed, else EPERM.
  const newer = Object.values(NEWER_ALLOWED);
  prog.push([BPF_JGE_K, 0, newer.length + 1, FIRST_UNREVIEWED]);
  newer.forEach((nr, i) => prog.push([BPF_JEQ_K, newer.length - i, 0, nr]));
  prog.push(errno(EPERM));
  // clone(flags, …) with a namespace flag → EPERM (the accumulator is reloaded below).
  prog.push([BPF_JEQ_K, 0, 3, CLONE]);
  prog.push([BPF_LD_W_ABS, 0, 0, offArg(0)]);
  prog.push([BPF_JSET_K, 0, 1, CLONE_NAMESPACE_FLAGS]);
  prog.push(errno(EPERM));
  // socket(family, …) and socketpair(family, …): only the allowed families.
  for (const call of [SOCKET, SOCKETPAIR]) {
    prog.push([BPF_LD_W_ABS, 0, 0, OFF_NR]);
    const families = call === SOCKETPAIR ? [1] : ALLOWED_FAMILIES;
    prog.push([BPF_JEQ_K, 0, families.length + 2, call]);
    prog.push([BPF_LD_W_ABS, 0, 0, offArg(0)]);
    families.forEach((f, i) => prog.push([BPF_JEQ_K, families.length - i, 0, f]));
    prog.push(errno(EPERM));
  }
  prog.push([BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW]);
  const out = Buffer.alloc(prog.length * 8);
  prog.forEach(([code, jt, jf, k], i) => {
    out.writeUInt16LE(code, i * 8);
    out.writeUInt8(jt, i * 8 + 2);
    out.writeUInt8(jf, i * 8 + 3);
    out.writeUInt32LE(k >>> 0, i * 8 + 4);
  });
  return out;
}
