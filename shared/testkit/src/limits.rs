//! Kernel limits a test cannot set on this machine, imposed on one child process.
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The child's `io_uring_setup` fails with ENOMEM for rings of more than two entries, as it
/// does on kernels before 5.12 when a ring exceeds RLIMIT_MEMLOCK (here rings are accounted to
/// the memory cgroup and that limit cannot be shown). A seccomp filter, installed between fork
/// and exec; every thread of the child inherits it.
pub fn refuse_large_io_uring_rings(command: &mut Command) {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    compile_error!("refuse_large_io_uring_rings knows the seccomp audit arch of x86_64 and aarch64 only");
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGT_K: u16 = 0x25;
    const RET_K: u16 = 0x06;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    // Offsets in struct seccomp_data: nr 0, arch 4, args[0] 16 (its low half, little-endian).
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let program = [
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 0, 5, AUDIT_ARCH),
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 0, 3, libc::SYS_io_uring_setup as u32),
        op(LD_W_ABS, 0, 0, 16),
        op(JGT_K, 0, 1, 2),
        op(RET_K, 0, 0, RET_ERRNO | libc::ENOMEM as u32),
        op(RET_K, 0, 0, RET_ALLOW),
    ];
    // SAFETY: between fork and exec, only prctl(2) on this process's own settings, reading a
    // program that the closure owns.
    unsafe {
        command.pre_exec(move || {
            let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut _ };
            if libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
