//! exec and attach over plain SPDY (kubectl before 1.30, or with websockets turned off): the
//! client opens `error`, `stdin`, `stdout`, `stderr` (and `resize` for a tty) streams; the
//! command's output goes to them, and its metav1 Status (protocol v4) to the error stream.
use std::time::Duration;

use tokio::sync::mpsc;

use super::exec::{exit_status, run, Out, Pod};
use super::spdy_session::Stream;

pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

pub async fn serve(mut streams: mpsc::Receiver<Stream>, argv: Vec<String>, wanted: Wanted, pod: Pod) {
    let expected = 1
        + usize::from(wanted.stdin)
        + usize::from(wanted.stdout)
        + usize::from(wanted.stderr)
        + usize::from(wanted.tty);
    let (mut error, mut stdin, mut stdout, mut stderr) = (None, None, None, None);
    let mut others = Vec::new();
    let collect = async {
        for _ in 0..expected {
            let Some(s) = streams.recv().await else { break };
            match s.header("streamtype") {
                Some("error") => error = Some(s),
                Some("stdin") => stdin = Some(s),
                Some("stdout") => stdout = Some(s),
                Some("stderr") => stderr = Some(s),
                _ => others.push(s),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), collect).await.is_err() {
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel(64);
    let stdin_rx = stdin.map(|s| s.data);
    let cmd_argv = argv.clone();
    let command = tokio::spawn(async move { run(&cmd_argv, stdin_rx, out_tx, &pod).await });
    while let Some(o) = out_rx.recv().await {
        let (target, bytes) = match o {
            Out::Stdout(b) => (&stdout, b),
            Out::Stderr(b) => (&stderr, b),
        };
        if let Some(s) = target {
            s.writer.write(bytes).await;
        }
    }
    let code = command.await.unwrap_or(1);
    for s in [&stdout, &stderr].into_iter().flatten() {
        s.writer.close().await;
    }
    if let Some(e) = &error {
        e.writer.write(serde_json::to_vec(&exit_status(&argv, code)).unwrap_or_default()).await;
        e.writer.close().await;
    }
    // Keep the streams open until the client hangs up (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(10), async { while streams.recv().await.is_some() {} }).await;
    drop(others);
}
