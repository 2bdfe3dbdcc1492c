//! The commands a fake pod can run, whatever the transport (WebSocket or SPDY): `echo`, `cat`,
//! `test -d|-e|-f`, `ls`, `sleep`, and `tar` as `kubectl cp` drives it, over a tiny in-memory
//! file system per pod. Anything else exits 127.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::store::Store;

/// Output of a command.
#[derive(Debug)]
pub enum Out {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// Where a command runs.
#[derive(Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub store: Arc<Mutex<Store>>,
}

/// Largest stdin a command buffers (tar extraction).
const MAX_STDIN: usize = 64 << 20;

fn is_dir(files: &std::collections::BTreeMap<String, Vec<u8>>, path: &str) -> bool {
    let p = path.trim_end_matches('/');
    if p.is_empty() || p == "/tmp" {
        return true;
    }
    let prefix = format!("{p}/");
    files.keys().any(|k| k.starts_with(&prefix))
}

fn normalize(path: &str, cwd: &str) -> String {
    let joined = if path.starts_with('/') { path.to_string() } else { format!("{cwd}/{path}") };
    let mut parts: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Runs `argv` in `pod`; returns the exit code.
pub async fn run(argv: &[String], stdin: Option<mpsc::Receiver<Vec<u8>>>, out: mpsc::Sender<Out>, pod: &Pod) -> i32 {
    let Some(cmd) = argv.first() else { return 127 };
    let args = &argv[1..];
    match cmd.as_str() {
        "echo" => {
            let _ = out.send(Out::Stdout(format!("{}\n", args.join(" ")).into_bytes())).await;
            0
        }
        "cat" if args.is_empty() => {
            let Some(mut stdin) = stdin else { return 0 };
            while let Some(chunk) = stdin.recv().await {
                if out.send(Out::Stdout(chunk)).await.is_err() {
                    return 1;
                }
            }
            0
        }
        "cat" => {
            let mut code = 0;
            for f in args {
                let content =
                    pod.store.lock().unwrap().files(&pod.namespace, &pod.name).get(&normalize(f, "/")).cloned();
                match content {
                    Some(c) => {
                        let _ = out.send(Out::Stdout(c)).await;
                    }
                    None => {
                        let _ =
                            out.send(Out::Stderr(format!("cat: {f}: No such file or directory\n").into_bytes())).await;
                        code = 1;
                    }
                }
            }
            code
        }
        "test" if args.len() == 2 => {
            let path = normalize(&args[1], "/");
            let mut store = pod.store.lock().unwrap();
            let files = store.files(&pod.namespace, &pod.name);
            let ok = match args[0].as_str() {
                "-d" => is_dir(files, &path),
                "-f" => files.contains_key(&path),
                "-e" => files.contains_key(&path) || is_dir(files, &path),
                _ => false,
            };
            i32::from(!ok)
        }
        "ls" => {
            let path = normalize(args.first().map_or("/", |s| s.as_str()), "/");
            let listing: String = {
                let mut store = pod.store.lock().unwrap();
                let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
                let mut names: Vec<String> = store
                    .files(&pod.namespace, &pod.name)
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix).map(|r| r.split('/').next().unwrap_or("").to_string()))
                    .collect();
                names.dedup();
                names.iter().map(|n| format!("{n}\n")).collect()
            };
            let _ = out.send(Out::Stdout(listing.into_bytes())).await;
            0
        }
        "sleep" => {
            let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(1.0);
            tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 60.0))).await;
            0
        }
        "tar" => tar(args, stdin, out, pod).await,
        other => {
            let _ = out.send(Out::Stderr(format!("{other}: command not found\n").into_bytes())).await;
            127
        }
    }
}

async fn tar(args: &[String], stdin: Option<mpsc::Receiver<Vec<u8>>>, out: mpsc::Sender<Out>, pod: &Pod) -> i32 {
    let (mut create, mut extract, mut dir) = (false, false, "/".to_string());
    let mut paths = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "-C" {
            dir = args.get(i + 1).cloned().unwrap_or_default();
            i += 2;
            continue;
        }
        if a == "-" || a.starts_with("--") {
            i += 1;
            continue;
        }
        // Flags: "-xmf", or old style "cf" as the first word.
        if a.starts_with('-') || (i == 0 && a.chars().all(|c| c.is_ascii_alphabetic())) {
            create |= a.contains('c');
            extract |= a.contains('x');
            i += 1;
            continue;
        }
        paths.push(a.to_string());
        i += 1;
    }
    if create {
        let mut builder = tar::Builder::new(Vec::new());
        let mut missing = Vec::new();
        {
            let mut store = pod.store.lock().unwrap();
            let files = store.files(&pod.namespace, &pod.name);
            for p in &paths {
                let abs = normalize(p, &dir);
                let mut found = false;
                for (name, data) in files.iter() {
                    if *name == abs || name.starts_with(&format!("{}/", abs.trim_end_matches('/'))) {
                        found = true;
                        let mut header = tar::Header::new_gnu();
                        header.set_size(data.len() as u64);
                        header.set_mode(0o644);
                        header.set_mtime(0);
                        header.set_entry_type(tar::EntryType::Regular);
                        let _ = builder.append_data(&mut header, name.trim_start_matches('/'), data.as_slice());
                    }
                }
                if !found {
                    missing.push(p.clone());
                }
            }
        }
        let archive = builder.into_inner().unwrap_or_default();
        let _ = out.send(Out::Stdout(archive)).await;
        for p in &missing {
            let msg = format!("tar: {p}: Cannot stat: No such file or directory\n");
            let _ = out.send(Out::Stderr(msg.into_bytes())).await;
        }
        return if missing.is_empty() { 0 } else { 2 };
    }
    if extract {
        let mut input = Vec::new();
        if let Some(mut stdin) = stdin {
            while let Some(chunk) = stdin.recv().await {
                if input.len() + chunk.len() > MAX_STDIN {
                    return 2;
                }
                input.extend(chunk);
            }
        }
        let mut archive = tar::Archive::new(input.as_slice());
        let Ok(entries) = archive.entries() else { return 2 };
        let mut extracted = Vec::new();
        for entry in entries {
            let Ok(mut entry) = entry else { return 2 };
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let Ok(path) = entry.path().map(|p| p.to_string_lossy().into_owned()) else { return 2 };
            let mut data = Vec::new();
            if std::io::Read::read_to_end(&mut entry, &mut data).is_err() {
                return 2;
            }
            extracted.push((normalize(&path, &normalize(&dir, "/")), data));
        }
        let mut store = pod.store.lock().unwrap();
        let files = store.files(&pod.namespace, &pod.name);
        for (path, data) in extracted {
            files.insert(path, data);
        }
        return 0;
    }
    let _ = out.send(Out::Stderr(b"tar: need c or x\n".to_vec())).await;
    2
}

/// The Status the error channel carries when a command ends with `code`.
pub fn exit_status(argv: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        Pod { namespace: "default".into(), name: "p".into(), store: Arc::new(Mutex::new(Store::new())) }
    }

    async fn run_collect(pod: &Pod, argv: &[&str], input: Option<Vec<u8>>) -> (i32, Vec<u8>) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let stdin = input.map(|i| {
            let (tx, rx) = mpsc::channel(4);
            tx.try_send(i).unwrap();
            rx
        });
        let (tx, mut rx) = mpsc::channel(64);
        let code = run(&argv, stdin, tx, pod).await;
        let mut stdout = Vec::new();
        while let Ok(o) = rx.try_recv() {
            if let Out::Stdout(b) = o {
                stdout.extend(b);
            }
        }
        (code, stdout)
    }

    #[tokio::test]
    async fn tar_round_trips_through_the_pod_file_system() {
        let pod = pod();
        pod.store.lock().unwrap().files("default", "p").insert("/data/a.txt".into(), b"alpha".to_vec());
        let (code, archive) = run_collect(&pod, &["tar", "cf", "-", "/data"], None).await;
        assert_eq!(code, 0);
        let (code, _) =
            run_collect(&pod, &["tar", "--no-same-permissions", "-xmf", "-", "-C", "/copy"], Some(archive)).await;
        assert_eq!(code, 0);
        assert_eq!(pod.store.lock().unwrap().files("default", "p").get("/copy/data/a.txt").unwrap(), b"alpha");
        assert_eq!(run_collect(&pod, &["test", "-d", "/copy/data"], None).await.0, 0);
        assert_eq!(run_collect(&pod, &["test", "-d", "/nope"], None).await.0, 1);
        assert_eq!(run_collect(&pod, &["echo", "hi", "there"], None).await.1, b"hi there\n");
    }
}
