//! Turns orchestration events into lines a person can follow in a Concourse build log
//! (which is not a terminal: one line per event, no redrawn progress bars), and renders
//! the per-phase timings table.

use crate::events::{Event, EventSink};
use crate::orchestrate::Timings;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Writes `[hh:mm:ss] message` lines to a writer (stderr in the CLI).
pub struct LogReporter<W: Write + Send> {
    out: Mutex<W>,
    debug: bool,
}

impl<W: Write + Send> LogReporter<W> {
    pub fn new(out: W, debug: bool) -> Self {
        LogReporter { out: Mutex::new(out), debug }
    }
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap()
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The line for an event, or `None` for events not worth a line at this level.
pub fn render(event: &Event, debug: bool) -> Option<String> {
    Some(match event {
        Event::Info(m) => m.clone(),
        Event::Warning(m) => format!("WARNING: {m}"),
        Event::Debug(m) if debug => format!("DEBUG: {m}"),
        Event::Debug(_) => return None,
        Event::PhaseStarted(p) => format!("== {} ==", p.name()),
        Event::PhaseFinished { phase, elapsed } => format!("== {} done in {} ==", phase.name(), secs(*elapsed)),
        Event::ScriptStarted { instance, job, kind } => format!("Running {kind} for job {job} on {instance}..."),
        Event::ScriptFinished { instance, job, kind, elapsed, error: None } => {
            format!("Finished {kind} for job {job} on {instance} ({})", secs(*elapsed))
        }
        Event::ScriptFinished { instance, job, kind, elapsed, error: Some(e) } => {
            format!("FAILED {kind} for job {job} on {instance} after {}: {e}", secs(*elapsed))
        }
        Event::TransferStarted { instance, job, size } => {
            format!("Copying backup -- {} uncompressed -- for job {job} on {instance}...", human_bytes(*size))
        }
        Event::TransferProgress { instance, job, bytes, size } => {
            let pct = if *size == 0 { 0 } else { (bytes * 100 / size).min(99) };
            format!("Copying backup for job {job} on {instance} -- {pct}% complete")
        }
        Event::TransferFinished { instance, job, bytes, elapsed } => {
            let rate = *bytes as f64 / elapsed.as_secs_f64().max(1e-6);
            format!(
                "Finished copying backup for job {job} on {instance} -- {} in {} ({}/s), checksums match",
                human_bytes(*bytes),
                secs(*elapsed),
                human_bytes(rate as u64)
            )
        }
        Event::Cancelling => "Stop requested: finishing owed unlocks and cleanup (send the signal again to exit now)".into(),
        // Every line of a multi-line message (a script's stderr), so none is anonymous.
        Event::Labelled { label, event } => label_lines(label, &render(event, debug)?).trim_end_matches('\n').to_string(),
    })
}

impl<W: Write + Send> EventSink for LogReporter<W> {
    fn emit(&self, event: Event) {
        if let Some(line) = render(&event, self.debug) {
            let now = chrono::Local::now().format("%H:%M:%S");
            let mut out = self.out.lock().unwrap();
            // A closed stderr must not stop a backup.
            let _ = writeln!(out, "[{now}] {line}");
        }
    }
}

/// `text` with `[label] ` before each line.
fn label_lines(label: &str, text: &str) -> String {
    text.lines().map(|line| format!("[{label}] {line}\n")).collect()
}

/// The timings table printed at the end of a run.
pub fn timings_table(t: &Timings) -> String {
    let mut s = String::from("phase      seconds\n");
    for (phase, d) in &t.phases {
        s.push_str(&format!("{phase:<10} {:>8.3}\n", d.as_secs_f64()));
    }
    if let Some(w) = t.lock_window {
        s.push_str(&format!("lock window (API downtime) {:.3}s\n", w.as_secs_f64()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceId, ScriptKind};

    #[test]
    fn lines_for_people() {
        let e = Event::ScriptFinished {
            instance: InstanceId::new("api", "0"),
            job: "cc".into(),
            kind: ScriptKind::PreBackupLock,
            elapsed: Duration::from_millis(1500),
            error: Some("boom - exit code 1".into()),
        };
        assert_eq!(render(&e, false).unwrap(), "FAILED pre-backup-lock for job cc on api/0 after 1.50s: boom - exit code 1");
        assert_eq!(render(&Event::Debug("x".into()), false), None);
        assert_eq!(render(&Event::Debug("x".into()), true).unwrap(), "DEBUG: x");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }

    #[test]
    fn labelled_events_name_every_line() {
        let inner = Event::Warning("first\nsecond".into());
        let e = Event::Labelled { label: "cf".into(), event: Box::new(inner) };
        assert_eq!(render(&e, false).unwrap(), "[cf] WARNING: first\n[cf] second");
        let debug = Event::Labelled { label: "cf".into(), event: Box::new(Event::Debug("x".into())) };
        assert_eq!(render(&debug, false), None, "debug stays hidden without --debug");
        assert_eq!(label_lines("z", "a\nb\n"), "[z] a\n[z] b\n");
    }

    #[test]
    fn table_lists_phases_and_window() {
        let mut t = Timings::default();
        t.phases.insert("lock", Duration::from_millis(250));
        t.lock_window = Some(Duration::from_millis(1250));
        let s = timings_table(&t);
        assert!(s.contains("lock          0.250"), "{s}");
        assert!(s.contains("lock window (API downtime) 1.250s"), "{s}");
    }
}
