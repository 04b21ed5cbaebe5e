//! Reports: the parameters, seed, machine, wall time and process cost of a run, with the
//! scenario's results, written as JSON and as a Markdown table of the same numbers.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::SimError;
use crate::cluster::ProcessCost;

/// One row of the Markdown table: a metric and its value as printed.
pub type Row = (String, String);

/// What a scenario measured, in a typed form and as table rows.
pub trait Outcome: Serialize {
    fn rows(&self) -> Vec<Row>;
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub nproc: usize,
    pub os: String,
    pub arch: String,
    /// The 1-minute load average when the report was written (other work on the machine
    /// slows a run down).
    pub load_avg_1m: f64,
}

impl Machine {
    pub fn this() -> Machine {
        Machine {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            load_avg_1m: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report<P: Serialize, R: Serialize> {
    pub scenario: String,
    /// The command line that produced the report.
    pub command: String,
    pub seed: u64,
    pub nodes: usize,
    pub machine: Machine,
    pub wall_time_secs: f64,
    /// CPU time the process used during the run, and its peak memory so far.
    pub cost: ProcessCost,
    pub parameters: P,
    pub results: R,
}

/// Formats a number of bytes as KiB/MiB.
pub fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 { format!("{:.2} MiB", b / 1024.0 / 1024.0) } else { format!("{:.1} KiB", b / 1024.0) }
}

/// `min / median / max` of a summary of counts.
pub fn range(s: &crate::stats::Summary) -> String {
    format!("{:.0} / {:.0} / {:.0}", s.min, s.p50, s.max)
}

/// `p50 / p90 / p99 / max` of a summary with a unit.
pub fn spread(s: &crate::stats::Summary, unit: &str) -> String {
    format!("{:.1} / {:.1} / {:.1} / {:.1} {unit} (n = {})", s.p50, s.p90, s.p99, s.max, s.count)
}

impl<P: Serialize, R: Outcome> Report<P, R> {
    /// The Markdown page: a header with the parameters and machine, then the results table.
    pub fn markdown(&self) -> Result<String, SimError> {
        let mut md = format!("# quiver-sim: `{}`, {} nodes, seed {}\n\n", self.scenario, self.nodes, self.seed);
        md.push_str(&format!("Command: `{}`\n\n", self.command));
        md.push_str(&format!(
            "Machine: {} CPUs ({}/{}, load average {:.1} at the end); wall time {:.1} s; process CPU {:.1} s; peak RSS {:.0} MiB\n\n",
            self.machine.nproc,
            self.machine.os,
            self.machine.arch,
            self.machine.load_avg_1m,
            self.wall_time_secs,
            self.cost.cpu_secs,
            self.cost.peak_rss_mib
        ));
        md.push_str(&format!("Parameters: `{}`\n\n", serde_json::to_string(&self.parameters)?));
        md.push_str("| metric | value |\n|---|---|\n");
        for (k, v) in self.results.rows() {
            md.push_str(&format!("| {k} | {v} |\n"));
        }
        Ok(md)
    }

    /// Writes `<dir>/<stem>.json` and `<dir>/<stem>.md`; returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), SimError> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{stem}.json"));
        let md = dir.join(format!("{stem}.md"));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        std::fs::write(&md, self.markdown()?)?;
        Ok((json, md))
    }
}
