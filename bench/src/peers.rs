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
    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for Peer {
    /// Asks the peer to stop (SIGTERM) and waits a moment for it before
    /// `kill_on_drop` kills it: nginx's master stops its workers on TERM,
    /// but a killed master leaves them running.
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else { return };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
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

/// `nginx` as a plain reverse proxy to `upstream`, with keep-alive
/// connections to it and two worker processes (one per core).
pub(crate) async fn nginx(upstream: SocketAddr) -> anyhow::Result<(Peer, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\ndaemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream up {{ server {upstream}; keepalive 64; keepalive_requests 10000000; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://up;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start nginx")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(addr).await?;
    Ok((
        Peer {
            name: "nginx",
            child,
            _dir: dir,
        },
        addr,
    ))
}

/// `haproxy` as a plain reverse proxy to `upstream` (HTTP mode, keep-alive
/// both ways, two threads).
pub(crate) async fn haproxy(upstream: SocketAddr) -> anyhow::Result<(Peer, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let conf = dir.path().join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 2\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\
             frontend front\n  bind 127.0.0.1:{port}\n  default_backend back\n\
             backend back\n  http-reuse always\n  server up {upstream}\n"
        ),
    )?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start haproxy")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(addr).await?;
    Ok((
        Peer {
            name: "HAProxy",
            child,
            _dir: dir,
        },
        addr,
    ))
}

/// The upstream every proxy forwards to: this binary's `upstream`
/// subcommand, a minimal HTTP/1.1 keep-alive server, in its own process.
pub(crate) async fn upstream() -> anyhow::Result<(Peer, SocketAddr)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let me = std::env::current_exe().context("the bench's own path")?;
    let child = Command::new(me)
        .args(["upstream", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start the upstream")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(addr).await?;
    Ok((
        Peer {
            name: "upstream",
            child,
            _dir: dir,
        },
        addr,
    ))
}
