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
    let rows: Vec<&str> = text.lines().skip(1).collect();
    for setting in ["nofile", "memlock", "kernel.io_uring_disabled", "net.core.somaxconn", "ip_local_port_range"] {
        assert!(rows.iter().any(|r| r.contains(setting)), "{setting} missing:\n{text}");
    }
    for row in &rows {
        // name, current value, recommended value, mark: columns 35.. and 58.. hold the values.
        let current = row.get(35..57).unwrap_or_default().trim();
        assert!(!current.is_empty(), "a setting without a current value:\n{row}");
        assert!(row.trim_end().ends_with("OK") || row.trim_end().ends_with("CHECK"), "{row}");
    }
}
