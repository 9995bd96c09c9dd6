//! The harness every integration test uses to start a real hub.
//!
//! - [`TestHub`]: the hub in this process, on `127.0.0.1:0`, with its own
//!   temporary data directory; stopped (gracefully) on [`TestHub::stop`] or
//!   when dropped.
//! - [`HubProcess`]: the `switchboard` binary as a child process, for what
//!   only a process can show: `kill -9`, SIGTERM, stdout.
//! - [`eventually`]: waits for a condition with a deadline, instead of
//!   sleeping and hoping.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_server::{Config, Overrides};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The admin token every test hub (and [`HubProcess`]) accepts
/// (`SWITCHBOARD_ADMIN_TOKEN`). [`TestHub::http`] and [`TestHub::api`] send
/// it; tests of access control make their own clients.
pub const ADMIN_TOKEN: &str = "switchboard-test-admin-token-0123456789abcdef";

/// A reqwest client that sends `token` on every request.
pub fn http_client(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()?)
}

/// Where a hub keeps its data: a temporary directory owned by the test, or
/// a path the test chose.
pub enum DataDir {
    /// Deleted when dropped.
    Temp(TempDir),
    /// Kept.
    Path(PathBuf),
}

impl DataDir {
    /// A fresh temporary directory.
    pub fn temp() -> anyhow::Result<Self> {
        Ok(Self::Temp(tempfile::tempdir()?))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Path(p) => p,
        }
    }
}

/// A hub running inside the test process.
pub struct TestHub {
    /// The bound address.
    pub addr: SocketAddr,
    /// A plain HTTP client for raw requests, sending [`ADMIN_TOKEN`].
    pub http: reqwest::Client,
    /// The typed client, sending [`ADMIN_TOKEN`].
    pub api: switchboard_client::Client,
    data: Option<DataDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestHub {
    /// A hub with default settings and a fresh data directory.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(DataDir::temp()?, "").await
    }

    /// A hub on `data`, configured by `toml` (the config file's syntax).
    pub async fn start_with(data: DataDir, toml: &str) -> anyhow::Result<Self> {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data.path().to_owned()),
            admin_token: Some(ADMIN_TOKEN.into()),
            ..Default::default()
        };
        let config = Config::from_toml(toml, &overrides)?;
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let hub = switchboard_server::Hub::open(config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            hub.serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .map_err(anyhow::Error::from)
        });
        let base = format!("http://{addr}");
        Ok(Self {
            addr,
            http: http_client(ADMIN_TOKEN)?,
            api: switchboard_client::Client::new(&base)?.with_token(ADMIN_TOKEN),
            data: Some(data),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A typed client with another credential.
    pub fn client_with(&self, token: &str) -> switchboard_client::Client {
        self.api.clone().with_token(token)
    }

    /// `GET path`, answered with JSON (any status); panics with the path
    /// when the request or the decoding fails, as a test should.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.as_ref().map_or(Path::new(""), DataDir::path)
    }

    /// Stops the hub gracefully, waits for it, and hands back its data
    /// directory so a new hub can start on it.
    pub async fn stop(mut self) -> anyhow::Result<DataDir> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .context("hub did not stop within 30s")???;
        }
        self.data.take().context("data directory already taken")
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// How [`HubProcess::spawn_with`] runs the hub.
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    /// `SWITCHBOARD_LOG` (`warn` when `None`).
    pub log_level: Option<String>,
    /// Where its standard error goes (inherited when `None`).
    pub stderr_to: Option<PathBuf>,
    /// Start without `SWITCHBOARD_ADMIN_TOKEN`, as a new user would.
    pub no_admin_token: bool,
}

/// The `switchboard` binary running as a child process.
pub struct HubProcess {
    /// The address it printed.
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    child: Child,
}

impl HubProcess {
    /// Runs `bin serve --listen 127.0.0.1:0 --data-dir DIR` plus `args`, and
    /// waits (up to 60 s) for the address line on stdout.
    pub async fn spawn(bin: &Path, data_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_with(bin, data_dir, args, &Spawn::default()).await
    }

    /// [`HubProcess::spawn`] with more control over the process.
    pub async fn spawn_with(
        bin: &Path,
        data_dir: &Path,
        args: &[&str],
        opts: &Spawn,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env(
                "SWITCHBOARD_LOG",
                opts.log_level.as_deref().unwrap_or("warn"),
            )
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if opts.no_admin_token {
            cmd.env_remove("SWITCHBOARD_ADMIN_TOKEN");
        } else {
            cmd.env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN);
        }
        match &opts.stderr_to {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("create {}", path.display()))?;
                cmd.stderr(Stdio::from(f));
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the hub printed no address within 60s")??
            .context("the hub exited before printing its address")?;
        let (scheme, addr) = if let Some(a) = line.strip_prefix("switchboard listening on http://")
        {
            ("http", a)
        } else if let Some(a) = line.strip_prefix("switchboard listening on https://") {
            ("https", a)
        } else {
            bail!("unexpected first line {line:?}");
        };
        let addr = addr
            .parse()
            .with_context(|| format!("address in {line:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            addr,
            scheme,
            child,
        })
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// A typed client of this hub sending [`ADMIN_TOKEN`].
    pub fn client(&self) -> anyhow::Result<switchboard_client::Client> {
        Ok(switchboard_client::Client::new(&self.url(""))?.with_token(ADMIN_TOKEN))
    }

    /// The OS process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the hub has exited")
    }

    /// Sends a signal with `kill(1)` (`-KILL`, `-TERM`, `-INT`).
    pub async fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.pid()?.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill {sig} failed: {status}");
        }
        Ok(())
    }

    /// Waits (up to `limit`) for the process to exit; its exit status.
    pub async fn wait(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .context("the hub did not exit in time")?
            .map_err(Into::into)
    }
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("{what}: not true within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
