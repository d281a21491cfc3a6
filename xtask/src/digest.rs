//! A short account of failed tests for the end of a CI log: what CI shows of a run is its tail,
//! and by then the failures are thousands of lines up, under other binaries' output and the
//! services' logs. The digest keeps, for each failed test, its output without backtrace frames,
//! then the last lines of every Statehouse or user-function log file that output names.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

/// Lines kept of one failed test's output.
const TEST_LINES: usize = 40;
/// Last lines shown of each log file a failure names.
const LOG_LINES: usize = 30;
/// Longest line shown (log lines can be long).
const LINE_CHARS: usize = 300;

/// Run `command` with its standard output echoed and kept; returns its status and output.
pub(crate) fn run_captured(mut command: Command) -> Result<(ExitStatus, Vec<String>)> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the command")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_else(|e| format!("<unreadable output: {e}>"));
        println!("{line}");
        lines.push(line);
    }
    Ok((child.wait()?, lines))
}

/// The digest of a failed `cargo test` output (empty when no test failed).
pub(crate) fn of_test_output(lines: &[String]) -> String {
    let mut out = String::new();
    let mut logs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = section_name(&lines[i]) else {
            i += 1;
            continue;
        };
        let _ = writeln!(out, "---- failed: {name}");
        i += 1;
        let mut kept = 0;
        while i < lines.len() && section_name(&lines[i]).is_none() && lines[i] != "failures:" {
            let line = &lines[i];
            i += 1;
            logs.extend(log_paths(line));
            if is_backtrace_frame(line) || line.trim().is_empty() {
                continue;
            }
            if kept < TEST_LINES {
                let _ = writeln!(out, "  {}", clip(line));
            }
            kept += 1;
        }
        if kept > TEST_LINES {
            let _ = writeln!(out, "  … {} more lines above in the log", kept - TEST_LINES);
        }
    }
    for path in logs {
        let _ = writeln!(out, "---- last {LOG_LINES} lines of {}:", path.display());
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = strip_ansi(&String::from_utf8_lossy(&bytes));
                let all: Vec<&str> = text.lines().collect();
                for line in &all[all.len().saturating_sub(LOG_LINES)..] {
                    let _ = writeln!(out, "  {}", clip(line));
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  (cannot read it: {e})");
            }
        }
    }
    out
}

/// `---- name stdout ----` → `name`.
fn section_name(line: &str) -> Option<&str> {
    line.strip_prefix("---- ")?.strip_suffix(" stdout ----")
}

fn is_backtrace_frame(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("at ")
        || t.split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        || t.starts_with("stack backtrace:")
        || t.starts_with("note: Some details are omitted")
}

/// The Statehouse and user-function log files a line names.
fn log_paths(line: &str) -> Vec<PathBuf> {
    line.split(|c: char| c.is_whitespace() || matches!(c, ',' | '(' | ')' | '"' | '\''))
        .map(|t| t.trim_end_matches(['.', ';', ':']))
        .filter(|t| t.starts_with("/tmp/statehouse-") && t.ends_with(".log"))
        .map(PathBuf::from)
        .filter(|p| Path::new(p).is_file())
        .collect()
}

fn clip(line: &str) -> String {
    if line.chars().count() <= LINE_CHARS {
        return line.to_owned();
    }
    let mut s: String = line.chars().take(LINE_CHARS).collect();
    s.push('…');
    s
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_failures_without_frames_and_tails_the_named_logs() {
        let dir = std::env::temp_dir().join(format!("statehouse-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("processor-1.log");
        let log_lines: Vec<String> = (0..50)
            .map(|i| format!("\u{1b}[32m INFO\u{1b}[0m line {i}"))
            .collect();
        std::fs::write(&log, log_lines.join("\n")).unwrap();
        let output: Vec<String> = [
            "running 2 tests",
            "test a ... ok",
            "test b ... FAILED",
            "",
            "failures:",
            "",
            "---- b stdout ----",
            "thread 'b' panicked at e2e/src/driver.rs:208:13:",
            &format!("no progress; processor log: {}, see it", log.display()),
            "stack backtrace:",
            "   0: __rustc::rust_begin_unwind",
            "             at /rustc/library/std/src/panicking.rs:689:5",
            "",
            "failures:",
            "    b",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let digest = of_test_output(&output);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(digest.starts_with("---- failed: b\n"), "{digest}");
        assert!(digest.contains("panicked at e2e/src/driver.rs:208:13"));
        assert!(!digest.contains("rust_begin_unwind") && !digest.contains("/rustc/"));
        assert!(digest.contains("line 49") && digest.contains("line 20"));
        assert!(!digest.contains("line 19\n") && !digest.contains('\u{1b}'));
        assert!(of_test_output(&output[..2]).is_empty());
    }
}
