//! The charts' data: every `gateway.console.sample-interval-ms` the gateway reads its own call
//! metrics (`crate::metrics::CALLS`, `CALL_SECONDS`) from the process's Prometheus recorder —
//! the same text `/metrics` serves, so the charts and a scraper never disagree — and turns the
//! change since the previous reading into one [`Sample`] in a bounded [`Ring`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::ring::Ring;
use crate::metrics;

/// One interval of the gateway's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// End of the interval, unix ms.
    pub(crate) at_ms: i64,
    /// Client calls finished per second (every outcome).
    pub(crate) calls_per_s: f64,
    /// Of those, calls whose outcome was not OK, per second.
    pub(crate) errors_per_s: f64,
    /// Mean call latency over the interval, ms (none without calls).
    pub(crate) mean_ms: Option<f64>,
    /// The 99th percentile latency over the interval, ms: interpolated within the histogram's
    /// buckets (as Prometheus' `histogram_quantile` does); with summaries instead, the highest
    /// p99 they report (their own sliding window). None without calls.
    pub(crate) p99_ms: Option<f64>,
}

/// The cumulative readings a sample is the difference of.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    pub(crate) calls: f64,
    pub(crate) errors: f64,
    pub(crate) seconds_sum: f64,
    pub(crate) seconds_count: f64,
    /// A summary's p99 (the highest of its label sets), when the recorder renders summaries.
    pub(crate) p99_s: Option<f64>,
    /// The histogram's cumulative buckets `(le, count)`, summed over label sets, by `le`.
    pub(crate) buckets: Vec<(f64, f64)>,
}

/// Reads [`Totals`] from Prometheus text exposition: `calls` is a counter with a `code` label
/// (`Ok`/`OK` or another gRPC code name), `seconds` a histogram (`_bucket` series with `le`,
/// `_sum`, `_count`) or a summary (`quantile` series instead of buckets).
pub(crate) fn totals(text: &str, calls: &str, seconds: &str) -> Totals {
    let sum = format!("{seconds}_sum");
    let count = format!("{seconds}_count");
    let bucket = format!("{seconds}_bucket");
    let mut totals = Totals::default();
    for line in text.lines() {
        let Some((name, labels, value)) = parse_line(line) else {
            continue;
        };
        if name == calls {
            totals.calls += value;
            if label(labels, "code").is_some_and(|c| !c.eq_ignore_ascii_case("ok")) {
                totals.errors += value;
            }
        } else if name == sum {
            totals.seconds_sum += value;
        } else if name == count {
            totals.seconds_count += value;
        } else if name == bucket {
            let Some(le) = label(labels, "le").and_then(parse_value) else {
                continue;
            };
            match totals.buckets.iter_mut().find(|(l, _)| *l == le) {
                Some((_, c)) => *c += value,
                None => totals.buckets.push((le, value)),
            }
        } else if name == seconds && label(labels, "quantile") == Some("0.99") && value.is_finite()
        {
            totals.p99_s = Some(totals.p99_s.map_or(value, |p: f64| p.max(value)));
        }
    }
    totals.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    totals
}

/// Quantile `q` of the observations between two readings of a cumulative histogram: the
/// bucket the rank falls in, linearly interpolated (the lowest bucket from 0; a rank in the
/// `+Inf` bucket answers the highest finite bound).
pub(crate) fn quantile(q: f64, before: &[(f64, f64)], now: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, b)| *b);
            (*le, if *n >= b { n - b } else { *n })
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut low, mut below) = (0.0, 0.0);
    for (le, count) in delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(low);
            }
            let within = count - below;
            let fraction = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(low + (le - low) * fraction);
        }
        (low, below) = (le, count);
    }
    None
}

/// The sample between two readings `elapsed` apart.
pub(crate) fn sample(at_ms: i64, before: &Totals, now: &Totals, elapsed: Duration) -> Sample {
    // A counter that went down was reset: count from zero.
    let delta = |b: f64, n: f64| if n >= b { n - b } else { n };
    let secs = elapsed.as_secs_f64().max(1e-3);
    let count = delta(before.seconds_count, now.seconds_count);
    let sum = delta(before.seconds_sum, now.seconds_sum);
    Sample {
        at_ms,
        calls_per_s: delta(before.calls, now.calls) / secs,
        errors_per_s: delta(before.errors, now.errors) / secs,
        mean_ms: (count > 0.0).then(|| sum / count * 1000.0),
        p99_ms: now
            .p99_s
            .or_else(|| quantile(0.99, &before.buckets, &now.buckets))
            .map(|s| s * 1000.0),
    }
}

/// `name{labels} value [timestamp]` → (name, labels without braces, value).
fn parse_line(line: &str) -> Option<(&str, &str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        let close = closing_brace(&line[name_end..])? + name_end;
        (&line[name_end + 1..close], &line[close + 1..])
    } else {
        ("", &line[name_end..])
    };
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some((name, labels, value))
}

fn parse_value(value: &str) -> Option<f64> {
    match value {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        v => v.parse().ok(),
    }
}

/// The index of the `}` closing a label set starting at `text[0] == '{'` (quotes respected).
fn closing_brace(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The value of label `key` in `a="x",b="y"` (values without escapes, as ours are).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"")?;
        let end = after.find('"')?;
        if k.trim_start_matches(',').trim() == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    None
}

/// The ring the charts read, shared with the sampling task.
pub(crate) type History = Arc<Mutex<Ring<Sample>>>;

/// Samples until `shutdown`, every `interval`, into `history`.
pub(crate) async fn run(history: History, interval: Duration, shutdown: CancellationToken) {
    let recorder = statehouse_runtime::admin_server::prometheus();
    let read = || totals(&recorder.render(), metrics::CALLS, metrics::CALL_SECONDS);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut before = (tokio::time::Instant::now(), read());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = (tokio::time::Instant::now(), read());
        let s = sample(super::now_ms(), &before.1, &now.1, now.0 - before.0);
        history.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE statehouse_gateway_calls_total counter
statehouse_gateway_calls_total{protocol="grpc",code="Ok"} 90
statehouse_gateway_calls_total{protocol="http",code="OK"} 6
statehouse_gateway_calls_total{protocol="grpc",code="Unavailable"} 4
statehouse_gateway_calls_total_other 1000
# TYPE statehouse_gateway_call_seconds summary
statehouse_gateway_call_seconds{protocol="grpc",quantile="0.5"} 0.002
statehouse_gateway_call_seconds{protocol="grpc",quantile="0.99"} 0.010
statehouse_gateway_call_seconds{protocol="http",quantile="0.99"} 0.030
statehouse_gateway_call_seconds_sum{protocol="grpc"} 0.4
statehouse_gateway_call_seconds_sum{protocol="http"} 0.1
statehouse_gateway_call_seconds_count{protocol="grpc"} 94
statehouse_gateway_call_seconds_count{protocol="http"} 6
weird{a="}",code="x"} 5
"#;

    #[test]
    fn reads_the_call_metrics_from_prometheus_text() {
        let t = totals(
            TEXT,
            "statehouse_gateway_calls_total",
            "statehouse_gateway_call_seconds",
        );
        assert_eq!(t.calls, 100.0);
        assert_eq!(t.errors, 4.0);
        assert!((t.seconds_sum - 0.5).abs() < 1e-12);
        assert_eq!(t.seconds_count, 100.0);
        assert_eq!(t.p99_s, Some(0.030));
        assert!(t.buckets.is_empty());
        assert_eq!(
            parse_line(r#"weird{a="}",code="x"} 5"#),
            Some(("weird", r#"a="}",code="x""#, 5.0))
        );
        assert_eq!(label(r#"a="}",code="x""#, "code"), Some("x"));
        assert_eq!(parse_line("up 1 1700000000"), Some(("up", "", 1.0)));
        assert_eq!(parse_line("# HELP up"), None);
        assert_eq!(totals("", "a", "b"), Totals::default());
    }

    #[test]
    fn a_sample_is_the_rate_over_its_interval() {
        let before = Totals {
            calls: 100.0,
            errors: 4.0,
            seconds_sum: 0.5,
            seconds_count: 100.0,
            p99_s: Some(0.03),
            buckets: vec![],
        };
        let now = Totals {
            calls: 150.0,
            errors: 9.0,
            seconds_sum: 1.5,
            seconds_count: 150.0,
            p99_s: Some(0.05),
            buckets: vec![],
        };
        let s = sample(7, &before, &now, Duration::from_secs(5));
        assert_eq!(s.at_ms, 7);
        assert_eq!(s.calls_per_s, 10.0);
        assert_eq!(s.errors_per_s, 1.0);
        assert!((s.mean_ms.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(s.p99_ms, Some(50.0));
        // Idle: zero rates and no mean latency.
        let idle = sample(8, &now, &now, Duration::from_secs(5));
        assert_eq!((idle.calls_per_s, idle.mean_ms), (0.0, None));
        // A reset counter counts from zero.
        let reset = sample(9, &now, &before, Duration::from_secs(10));
        assert_eq!(reset.calls_per_s, 10.0);
    }

    #[test]
    fn p99_comes_from_the_histogram_buckets_of_the_interval() {
        let text = |fast: u32, slow: u32, inf: u32| {
            format!(
                "statehouse_gateway_call_seconds_bucket{{service=\"s\",le=\"0.01\"}} {fast}\n\
                 statehouse_gateway_call_seconds_bucket{{service=\"s\",le=\"0.1\"}} {slow}\n\
                 statehouse_gateway_call_seconds_bucket{{service=\"s\",le=\"+Inf\"}} {inf}\n\
                 statehouse_gateway_call_seconds_bucket{{service=\"t\",le=\"0.01\"}} 0\n\
                 statehouse_gateway_call_seconds_bucket{{service=\"t\",le=\"+Inf\"}} 0\n"
            )
        };
        let read = |t: String| totals(&t, "calls", "statehouse_gateway_call_seconds");
        let before = read(text(100, 100, 100));
        assert_eq!(
            before.buckets,
            [(0.01, 100.0), (0.1, 100.0), (f64::INFINITY, 100.0)]
        );
        // The interval: 100 more calls, 50 under 10 ms and 50 between 10 and 100 ms: the
        // p99 rank (99) is 49/50 into the second bucket.
        let now = read(text(150, 200, 200));
        let p99 = quantile(0.99, &before.buckets, &now.buckets).unwrap();
        assert!((p99 - (0.01 + 0.09 * 49.0 / 50.0)).abs() < 1e-12, "{p99}");
        let p50 = quantile(0.5, &before.buckets, &now.buckets).unwrap();
        assert!((p50 - 0.01).abs() < 1e-12, "{p50}");
        // Beyond the last finite bound: that bound. No calls: none.
        let slow = read(text(100, 100, 110));
        assert_eq!(quantile(0.99, &before.buckets, &slow.buckets), Some(0.1));
        assert_eq!(quantile(0.99, &before.buckets, &before.buckets), None);
        let s = sample(0, &before, &now, Duration::from_secs(1));
        assert!((s.p99_ms.unwrap() - 1000.0 * p99).abs() < 1e-9);
    }
}
