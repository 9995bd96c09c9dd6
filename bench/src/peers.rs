//! Peers started from the machine's packages, side by side with the hub:
//! each on free loopback ports, with its own scratch directory, killed when
//! dropped. A peer whose binary is missing is reported as missing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A running peer process.
pub(crate) struct Peer {
    pub(crate) name: &'static str,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// The peer's resident memory in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        crate::hub::rss_kib(self.child.id()?)
    }
}

/// A free loopback port (bound, then released: a small race, fine here).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether a binary is installed.
pub(crate) fn installed(bin: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .any(|d| Path::new(d).join(bin).exists())
}

async fn wait_for(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on {addr} after 5s")
}

/// `nats-server` with WebSocket enabled: (peer, client address, WebSocket
/// address).
pub(crate) async fn nats() -> anyhow::Result<(Peer, SocketAddr, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let (client, ws) = (free_port()?, free_port()?);
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{client}\nmax_connections: 1000000\nwebsocket {{\n  listen: \"127.0.0.1:{ws}\"\n  no_tls: true\n}}\n"
        ),
    )?;
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start nats-server")?;
    let client_addr = SocketAddr::from(([127, 0, 0, 1], client));
    let ws_addr = SocketAddr::from(([127, 0, 0, 1], ws));
    wait_for(client_addr).await?;
    wait_for(ws_addr).await?;
    Ok((
        Peer {
            name: "NATS (WebSocket)",
            child,
            _dir: dir,
        },
        client_addr,
        ws_addr,
    ))
}

/// `nats-server` with JetStream on, storing in files under its scratch
/// directory (`-js -sd DIR`): (peer, client address).
pub(crate) async fn jetstream() -> anyhow::Result<(Peer, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path().join("jetstream"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start nats-server")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(addr).await?;
    Ok((
        Peer {
            name: "NATS JetStream (file storage)",
            child,
            _dir: dir,
        },
        addr,
    ))
}

/// `redis-server` with nothing on disk and room for `clients`.
pub(crate) async fn redis(clients: usize) -> anyhow::Result<(Peer, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        // Protected mode admits only 127.0.0.1 and ::1 as clients; the
        // benchmark connects from other loopback addresses too. Bound to
        // 127.0.0.1, nothing outside this machine can reach it anyway.
        .args(["--protected-mode", "no"])
        .args(["--maxclients", &(clients + 100).to_string()])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start redis-server")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(addr).await?;
    Ok((
        Peer {
            name: "Redis (SUBSCRIBE)",
            child,
            _dir: dir,
        },
        addr,
    ))
}
