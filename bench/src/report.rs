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

/// The figures of one phase, as reported.
#[derive(Clone, Debug)]
pub(crate) struct Figures {
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) errors: u64,
}

impl Figures {
    pub(crate) fn of(o: &crate::load::Outcome) -> Self {
        Self {
            rate: o.rate(),
            p50_ms: o.ms(0.50),
            p99_ms: o.ms(0.99),
            p999_ms: o.ms(0.999),
            errors: o.errors,
        }
    }

    /// Each figure's median over runs (errors are summed).
    pub(crate) fn median(runs: &[Figures]) -> Figures {
        let med = |f: fn(&Figures) -> f64| median_of(runs, f);
        Figures {
            rate: med(|f| f.rate),
            p50_ms: med(|f| f.p50_ms),
            p99_ms: med(|f| f.p99_ms),
            p999_ms: med(|f| f.p999_ms),
            errors: runs.iter().map(|f| f.errors).sum(),
        }
    }
}

/// The median of one figure over runs (0 when there are none).
pub(crate) fn median_of<T>(runs: &[T], figure: impl Fn(&T) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(figure).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
