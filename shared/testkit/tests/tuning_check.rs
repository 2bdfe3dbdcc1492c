//! tuning/check, the script the tuning guide points to: it runs on this machine, prints every
//! setting with a current value (`?` when the kernel has none), and changes nothing.
use std::path::Path;
use std::process::Command;

#[test]
fn the_tuning_check_prints_a_value_for_every_setting() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tuning/check");
    let out = Command::new("bash").arg(&script).output().expect("bash runs tuning/check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("limits read from: "), "{text}");
    let rows: Vec<&str> = text.lines().skip(2).collect();
    let settings =
        ["nofile", "memlock", "kernel.io_uring_disabled", "net.core.somaxconn", "ip_local_port_range", "resolv.conf"];
    for setting in settings {
        assert!(rows.iter().any(|r| r.contains(setting)), "{setting} missing:\n{text}");
    }
    for row in &rows {
        // name, current value, recommended value, mark: columns 35.. and 58.. hold the values.
        let current = row.get(35..57).unwrap_or_default().trim();
        assert!(!current.is_empty(), "a setting without a current value:\n{row}");
        assert!(row.trim_end().ends_with("OK") || row.trim_end().ends_with("CHECK"), "{row}");
    }
}

#[test]
fn the_limits_are_the_proxy_process_s_own() {
    // A stand-in named bcs-api-proxy with a nofile limit no shell here has.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("bcs-api-proxy");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut command = Command::new(&fake);
    command.arg("30");
    // SAFETY: setrlimit(2) on the child itself, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_cur = 4321.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The copy was just written: a child another test forks meanwhile holds its descriptor
    // until that child's exec, and the kernel refuses to run a file open for writing (ETXTBSY).
    let mut tries = 0;
    let mut child = loop {
        match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            spawned => break spawned.unwrap(),
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tuning/check");
    let out = Command::new("bash").arg(&script).arg(child.id().to_string()).output().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("limits read from: bcs-api-proxy {}", child.id())), "{text}");
    let nofile = text.lines().find(|l| l.contains("nofile")).unwrap();
    assert!(nofile.contains(" 4321 ") && nofile.trim_end().ends_with("CHECK"), "{nofile}");
}
