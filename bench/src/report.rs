//! The Markdown report.

use crate::Settings;

/// One scenario's part of the report.
pub(crate) struct Section {
    pub(crate) title: String,
    pub(crate) body: String,
}

/// The whole report: the machine, then each scenario.
pub(crate) fn render(settings: &Settings, sections: &[Section]) -> String {
    let mut out = String::new();
    out.push_str("# Switchboard benchmark report\n\n");
    out.push_str(&format!(
        "- mode: {}\n- phase length: {:?}\n- machine: {} cores, {}\n- kernel: {}\n\n",
        if settings.smoke {
            "smoke (tiny sizes; figures mean nothing)"
        } else {
            "full"
        },
        settings.phase,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total().unwrap_or_else(|| "memory unknown".into()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
    ));
    for s in sections {
        out.push_str(&format!("## {}\n\n{}\n", s.title, s.body));
    }
    out
}

fn mem_total() -> Option<String> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(format!("{:.1} GiB memory", kib as f64 / 1024.0 / 1024.0))
}
