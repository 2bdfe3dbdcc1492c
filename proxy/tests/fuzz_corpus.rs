//! Replays every file of the fuzz corpora (fuzz/corpus/<target>/) through the fuzz targets'
//! checks on stable Rust, so each crash the fuzzer ever found stays fixed.
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its checks", path.display());
        files += 1;
    }
    assert!(files > 0, "no corpus for {target}");
}

#[test]
fn request_head_corpus() {
    replay("request_head", bcs_proxy::fuzzing::request_head);
}

#[test]
fn response_head_corpus() {
    replay("response_head", bcs_proxy::fuzzing::response_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", bcs_proxy::fuzzing::chunked);
}

#[test]
fn route_match_corpus() {
    replay("route_match", bcs_proxy::fuzzing::route_match);
}

#[test]
fn snapshot_frame_corpus() {
    replay("snapshot_frame", bcs_proxy::fuzzing::snapshot_frame);
}
