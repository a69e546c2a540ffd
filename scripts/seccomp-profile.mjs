// Writes deploy/seccomp-sandbox.json: the seccomp profile of the worker and scheduler containers
// (`node scripts/seccomp-profile.mjs`; a test fails when the committed file differs from this).
//
// Docker's kind of profile: everything not listed fails with EPERM. What is listed is what a Node
// process, bubblewrap and the sandboxes inside need, plus, unlike Docker's default profile, the
// calls that create a sandbox's namespaces without CAP_SYS_ADMIN (bubblewrap runs as the
// unprivileged `node` user and gets its privileges from a user namespace). Kept denied: what a
// container never needs and what would weaken the host (kernel modules, kexec, BPF, perf, keyrings,
// userfaultfd, io_uring, ptrace and cross-process memory access, clock and swap changes, …).
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Calls every process here uses: memory, files, time, signals, sockets, threads, process life. */
const everyday = {
  memory:
    'brk mmap mmap2 munmap mremap mprotect madvise mincore mlock mlock2 munlock mlockall munlockall msync membarrier memfd_create remap_file_pages pkey_alloc pkey_free pkey_mprotect',
  files:
    'read write readv writev pread64 pwrite64 preadv preadv2 pwritev pwritev2 open openat openat2 close close_range creat lseek _llseek dup dup2 dup3 fcntl fcntl64 ioctl ' +
    'stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx statfs statfs64 fstatfs fstatfs64 access faccessat faccessat2 ' +
    'getdents getdents64 getcwd chdir fchdir mkdir mkdirat rmdir rename renameat renameat2 link linkat symlink symlinkat unlink unlinkat readlink readlinkat ' +
    'chmod fchmod fchmodat chown chown32 fchown fchown32 fchownat lchown lchown32 umask truncate truncate64 ftruncate ftruncate64 fallocate fadvise64 fadvise64_64 readahead ' +
    'fsync fdatasync sync syncfs sync_file_range flock utime utimes utimensat utimensat_time64 futimesat copy_file_range sendfile sendfile64 splice tee vmsplice ' +
    'getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr mknod mknodat name_to_handle_at ' +
    'pipe pipe2 inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark',
  events:
    'poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64 epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2 ' +
    'eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_settime timerfd_settime64 timerfd_gettime timerfd_gettime64 ' +
    'io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64',
  time:
    'clock_gettime clock_gettime64 clock_getres clock_getres_time64 clock_nanosleep clock_nanosleep_time64 gettimeofday time times nanosleep ' +
    'alarm getitimer setitimer timer_create timer_delete timer_gettime timer_gettime64 timer_settime timer_settime64 timer_getoverrun',
  signals:
    'rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo ' +
    'sigaltstack sigreturn sigprocmask kill tgkill tkill pause pidfd_open pidfd_send_signal',
  sockets:
    'socketpair bind connect listen accept accept4 getsockname getpeername getsockopt setsockopt shutdown ' +
    'send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64 socketcall',
  threads:
    'futex futex_time64 futex_waitv set_robust_list get_robust_list set_tid_address gettid sched_yield sched_getaffinity sched_setaffinity ' +
    'sched_getparam sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max sched_get_priority_min sched_getattr sched_setattr ' +
    'sched_rr_get_interval sched_rr_get_interval_time64 rseq arch_prctl set_thread_area get_thread_area getcpu',
  process:
    'execve execveat exit exit_group fork vfork wait4 waitid waitpid getpid getppid getpgid getpgrp setpgid getsid setsid ' +
    'getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid getresuid32 getresgid getresgid32 getgroups getgroups32 ' +
    'setuid setuid32 setgid setgid32 setreuid setreuid32 setregid setregid32 setresuid setresuid32 setresgid setresgid32 setgroups setgroups32 setfsuid setfsuid32 setfsgid setfsgid32 ' +
    'capget capset prctl getpriority setpriority ioprio_get ioprio_set getrlimit setrlimit ugetrlimit prlimit64 getrusage sysinfo uname getrandom ' +
    'restart_syscall seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self process_mrelease',
  ipc: 'ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl shmget shmat shmdt shmctl mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive mq_timedreceive_time64 mq_notify mq_getsetattr',
};

/**
 * What creating a sandbox's namespaces takes (bubblewrap: --unshare-all, --proc, --dev, --tmpfs,
 * binds, pivot_root into the new root, --hostname). Allowed without CAP_SYS_ADMIN: inside a user
 * namespace the kernel checks these against the namespace's own capabilities, not the host's.
 */
const namespaces = 'unshare clone setns mount umount2 pivot_root chroot sethostname setdomainname';

const lines = (text) => text.split(/\s+/).filter(Boolean);
const allow = [...new Set([...Object.values(everyday).flatMap(lines), ...lines(namespaces)])].sort();

const profile = {
  defaultAction: 'SCMP_ACT_ERRNO',
  defaultErrnoRet: 1,
  archMap: [
    { architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] },
    { architecture: 'SCMP_ARCH_AARCH64', subArchitectures: ['SCMP_ARCH_ARM'] },
  ],
  syscalls: [
    {
      names: allow,
      action: 'SCMP_ACT_ALLOW',
      comment: 'everyday calls and sandbox namespace creation (scripts/seccomp-profile.mjs)',
    },
    {
      names: ['socket'],
      action: 'SCMP_ACT_ALLOW',
      args: [{ index: 0, value: 40, op: 'SCMP_CMP_NE' }],
      comment: 'every socket family but AF_VSOCK (40), a path to the hypervisor',
    },
    ...[0, 8, 0x20000, 0x20008, 0xffffffff].map((value) => ({
      names: ['personality'],
      action: 'SCMP_ACT_ALLOW',
      args: [{ index: 0, value, op: 'SCMP_CMP_EQ' }],
      comment: 'reading the personality and the usual values only (no READ_IMPLIES_EXEC, no ADDR_NO_RANDOMIZE)',
    })),
    {
      names: ['clone3'],
      action: 'SCMP_ACT_ERRNO',
      errnoRet: 38,
      comment: 'ENOSYS: its flags sit in memory a filter cannot read, so libc falls back to clone(2)',
    },
  ],
};

const out = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'deploy', 'seccomp-sandbox.json');
export const text = `${JSON.stringify(profile, null, 2)}\n`;
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(out, text);
  console.log(`wrote ${path.relative(process.cwd(), out)}: ${allow.length} calls allowed`);
}
