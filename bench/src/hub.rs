//! The hub under test, as a child process.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The admin credential every benchmarked hub accepts; the load sends it
/// on every request, so each figure includes authenticating it.
pub(crate) const TOKEN: &str = "switchboard-bench-admin-token-0123456789abcdef";

/// `Authorization` for [`TOKEN`].
pub(crate) fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A running hub; killed when dropped.
pub(crate) struct Hub {
    pub(crate) addr: SocketAddr,
    child: Child,
    _data: tempfile::TempDir,
}

impl Hub {
    /// Starts `bin serve` on a free loopback port with a fresh data dir.
    pub(crate) async fn start(bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .env("SWITCHBOARD_LOG", "warn")
            .env("SWITCHBOARD_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("hub printed no address in 30s")??
            .context("hub exited at start")?;
        let Some(addr) = line.strip_prefix("switchboard listening on http://") else {
            bail!("unexpected first line from the hub: {line:?}");
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            addr: addr.parse()?,
            child,
            _data: data,
        })
    }

    /// The CPU time the hub has used so far (user and system), from /proc.
    pub(crate) fn cpu_time(&self) -> Option<std::time::Duration> {
        cpu_time(self.pid()?)
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The hub's resident memory in KiB, from /proc.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id()?)
    }
}

/// A process's CPU time (user and system), from /proc: fields 14 and 15
/// of `/proc/<pid>/stat`, in clock ticks of 1/100 s (`USER_HZ` on Linux).
pub(crate) fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat(&stat)?.1)
}

/// A process's parent id (field 4) and CPU time (fields 14 and 15) from
/// its `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(u32, std::time::Duration)> {
    // The command name (field 2) may hold spaces; fields are counted after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let parent: u32 = fields.nth(1)?.parse().ok()?;
    let utime: u64 = fields.nth(9)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((
        parent,
        std::time::Duration::from_millis((utime + stime) * 10),
    ))
}

/// The CPU time of a process and of its children (nginx's workers are
/// children of its master), from /proc.
pub(crate) fn tree_cpu_time(pid: u32) -> Option<std::time::Duration> {
    let mut total = cpu_time(pid)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        if entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((parent, cpu)) = parse_stat(&stat)
            && parent == pid
        {
            total += cpu;
        }
    }
    Some(total)
}

/// A process's resident memory in KiB, from /proc.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parent_and_cpu_time_from_a_stat_line() {
        // A command name with spaces and a parenthesis; utime 250, stime 50.
        let line = "4242 (nginx: worker (x)) S 4200 4200 4200 0 -1 4194624 100 0 0 0 250 50 0 0 20 0 1 0 123 456 789";
        let (parent, cpu) = parse_stat(line).expect("parsed");
        assert_eq!(parent, 4200);
        assert_eq!(cpu, std::time::Duration::from_millis(3000));
    }
}
