//! A real ZooKeeper server for a test: Debian's `zookeeper` package (`apt-get install -y
//! zookeeper`; `scripts/test-all` installs it), run straight from its jar as a standalone
//! server on a free loopback port, with its own config and data directory in a tempdir. It can
//! be stopped, killed and started again on the same port and data (the sessions and nodes
//! survive a restart, as in a real ensemble member's restart).
//!
//! The package's `zkServer.sh` reads `/etc/zookeeper/conf`; this runs the same main class
//! (`org.apache.zookeeper.server.ZooKeeperServerMain`) on the same classpath
//! (`/usr/share/java/zookeeper.jar`, whose manifest lists its dependencies) with a config of
//! its own. `BCS_TEST_ZOOKEEPER_JAR` and `JAVA` override where they are found.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const JAR: &str = "/usr/share/java/zookeeper.jar";
/// Logging binding for slf4j, when the system has it: the server's log goes to `zookeeper.log`.
const SLF4J_SIMPLE: &str = "/usr/share/java/slf4j-simple.jar";
/// Server tick: sessions are expired at this granularity; sessions may last 1 s to 60 s.
const TICK_MS: u32 = 250;

pub struct ZooKeeper {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ZooKeeper {
    /// Starts a server and waits (at most 60 s) until it answers `ruok`.
    pub fn start() -> ZooKeeper {
        let dir = tempfile::tempdir().expect("tempdir for ZooKeeper");
        let port = crate::free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("ZooKeeper data dir");
        let config = format!(
            "tickTime={TICK_MS}\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             minSessionTimeout=1000\nmaxSessionTimeout=60000\nmaxClientCnxns=0\nadmin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,stat,cons\n",
            data.display()
        );
        std::fs::write(dir.path().join("zoo.cfg"), config).expect("write zoo.cfg");
        let mut zk = ZooKeeper { port, dir, child: None };
        zk.restart();
        zk
    }

    /// `127.0.0.1:<port>`, the `zk_config.bcs_zookeeper` value.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default()
    }

    /// Starts the server (again) on the same port and data; waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "ZooKeeper is already running");
        let jar = std::env::var("BCS_TEST_ZOOKEEPER_JAR").unwrap_or_else(|_| JAR.into());
        assert!(
            std::path::Path::new(&jar).exists(),
            "{jar} is missing: install Debian's zookeeper package (apt-get install -y zookeeper) or run scripts/test-all"
        );
        let mut classpath = jar;
        if std::path::Path::new(SLF4J_SIMPLE).exists() {
            classpath = format!("{classpath}:{SLF4J_SIMPLE}");
        }
        let java = std::env::var("JAVA").unwrap_or_else(|_| "java".into());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("zookeeper.log"))
            .expect("ZooKeeper log file");
        let child = Command::new(java)
            .args([
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-Dzookeeper.jmx.log4j.disable=true",
                "-cp",
                &classpath,
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ])
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start java (is a JRE installed? the zookeeper package brings one)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("ZooKeeper exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "ZooKeeper not ready after 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("zoo.cfg")
    }

    /// Whether the server answers `ruok` with `imok`.
    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"ruok").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer == "imok"
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        self.signal("-TERM", Duration::from_secs(10));
    }

    /// SIGKILL: the server vanishes mid-conversation.
    pub fn kill(&mut self) {
        self.signal("-KILL", Duration::from_secs(10));
    }

    fn signal(&mut self, signal: &str, patience: Duration) {
        if let Some(mut child) = self.child.take() {
            crate::process::signal_and_reap(&mut child, signal, patience);
        }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill();
    }
}
