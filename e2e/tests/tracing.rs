//! Traces end to end, collected by a real Jaeger (`cargo xtask infra up --jaeger`): a client
//! sends a command with its own W3C `traceparent`; Jaeger must hold one trace with the client's
//! trace id spanning the gateway (call, route), the processor (handle), the user-function call
//! and the commit, each the child of the one before; after a restart, the processor's
//! recovery span links to the command's span through the journal record's `traceparent`.

use std::time::{Duration, Instant};

use serde_json::Value;
use statehouse_core::semconv;
use statehouse_test_support::http;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

/// Where Jaeger is, or a loud failure with the fix.
fn jaeger() -> (String, String) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the tracing test needs Jaeger. Start it with `cargo xtask infra up --jaeger` and export the variables it prints (STATEHOUSE_TEST_OTLP, STATEHOUSE_TEST_JAEGER)"
            )
        })
    };
    let (otlp, query) = (var("STATEHOUSE_TEST_OTLP"), var("STATEHOUSE_TEST_JAEGER"));
    let query_addr = query.trim_start_matches("http://").to_string();
    assert!(
        std::net::TcpStream::connect(&query_addr).is_ok(),
        "Jaeger's query API at {query} does not answer: run `cargo xtask infra up --jaeger`"
    );
    (otlp, query_addr)
}

/// A random 16-byte trace id and 8-byte span id, hex.
fn ids() -> (String, String) {
    let hex = |n: usize| {
        (0..n)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect::<String>()
    };
    (hex(16), hex(8))
}

/// A span as Jaeger's API v3 (OTLP JSON) gives it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    links: Vec<(String, String)>,
}

fn spans_of(body: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    let empty = Vec::new();
    for resource in body["result"]["resourceSpans"].as_array().unwrap_or(&empty) {
        let service = resource["resource"]["attributes"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for scope in resource["scopeSpans"].as_array().unwrap_or(&empty) {
            for span in scope["spans"].as_array().unwrap_or(&empty) {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_lowercase();
                out.push(Span {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent: text("parentSpanId"),
                    links: span["links"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .map(|l| {
                            (
                                l["traceId"].as_str().unwrap_or_default().to_lowercase(),
                                l["spanId"].as_str().unwrap_or_default().to_lowercase(),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

fn get_json(addr: &str, path: &str) -> Option<Value> {
    let response = http::request(addr, "GET", path, &[], None).ok()?;
    (response.status == 200)
        .then(|| serde_json::from_str(&response.body).ok())
        .flatten()
}

/// Poll Jaeger until `done` holds for what `path` returns (spans are exported in batches).
fn wait_for(addr: &str, path: &str, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = get_json(addr, path)
            .map(|body| spans_of(&body))
            .unwrap_or_default();
        if done(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "Jaeger did not show {what} within 60 s (GET {path}); spans seen: {spans:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {spans:#?}");
    found[0]
}

#[test]
fn a_command_is_one_trace_from_the_client_to_the_commit_and_recovery_links_to_it() {
    let (otlp, jaeger) = jaeger();
    let mut options = Options::new(Kind::RustShoppingCart);
    options.partitions = 1;
    options.common_sets = vec![
        format!("telemetry.otlp-endpoint=\"{otlp}\""),
        "telemetry.sampling-ratio=1.0".into(),
    ];
    // No backup round before the restart: recovery must read the command's record from Kafka.
    options.processor_sets = vec!["processor.backup-interval-ms=600000".into()];
    let mut stack = Stack::start_ready(options);
    let started_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();

    let (trace_id, client_span) = ids();
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let cart = format!("traced-{}", &trace_id[..8]);
    let added = http::request(
        &stack.gateway_addr,
        "POST",
        &format!("/cart/{cart}/items/add"),
        &[
            ("Content-Type", "application/json"),
            ("traceparent", &traceparent),
            ("tracestate", "client=e2e"),
        ],
        Some(r#"{"productId":"plum","name":"Plum","quantity":3}"#),
    )
    .expect("the gateway answers");
    assert_eq!(added.status, 200, "{added:?}");

    // 1. One trace, the client's, across both processes.
    let path = format!("/api/v3/traces/{trace_id}");
    let names = [
        semconv::SPAN_GATEWAY_CALL,
        semconv::SPAN_ROUTE,
        semconv::SPAN_PROCESSOR_HANDLE,
        semconv::SPAN_USER_FUNCTION_CALL,
        semconv::SPAN_COMMIT,
    ];
    let spans = wait_for(&jaeger, &path, "the command's trace", |spans| {
        names.iter().all(|n| spans.iter().any(|s| s.name == *n))
    });
    assert!(
        spans.iter().all(|s| s.trace_id == trace_id),
        "every span carries the client's trace id: {spans:#?}"
    );
    let call = one(&spans, semconv::SPAN_GATEWAY_CALL);
    let route = one(&spans, semconv::SPAN_ROUTE);
    let handle = one(&spans, semconv::SPAN_PROCESSOR_HANDLE);
    let uf = one(&spans, semconv::SPAN_USER_FUNCTION_CALL);
    let commit = one(&spans, semconv::SPAN_COMMIT);
    assert_eq!(call.parent, client_span, "the gateway continues the client");
    assert_eq!(route.parent, call.span_id, "route ⊂ gateway call");
    assert_eq!(handle.parent, route.span_id, "processor ⊂ route");
    assert_eq!(uf.parent, handle.span_id, "user function call ⊂ processor");
    assert_eq!(commit.parent, handle.span_id, "commit ⊂ processor");
    assert_eq!(
        (call.service.as_str(), route.service.as_str()),
        ("statehouse-gateway", "statehouse-gateway")
    );
    for span in [handle, uf, commit] {
        assert_eq!(span.service, "statehouse-processor", "{span:?}");
    }

    // 2. Recovery links to the command: kill the processor (a graceful stop would flush the
    //    backup) and start it again; the takeover reads the record back from Kafka (no backup
    //    ran) and links its span to the record's traceparent, the processor's handle span.
    stack.pods[0].processor.kill9();
    stack.pods[0].processor.restart();
    stack.wait_ready(0, Duration::from_secs(120));
    let search = format!(
        "/api/v3/traces?query.service_name=statehouse-processor&query.operation_name={}&query.start_time_min={}&query.start_time_max={}&query.num_traces=100",
        semconv::SPAN_RECOVER,
        rfc3339(started_us),
        rfc3339(started_us + 3_600_000_000),
    );
    let recovered = wait_for(
        &jaeger,
        &search,
        "a recovery span linked to the command",
        |spans| {
            spans.iter().any(|s| {
                s.name == semconv::SPAN_RECOVER
                    && s.links
                        .contains(&(trace_id.clone(), handle.span_id.clone()))
            })
        },
    );
    let recovery = recovered
        .iter()
        .find(|s| s.links.iter().any(|(t, _)| *t == trace_id))
        .expect("found above");
    assert_ne!(
        recovery.trace_id, trace_id,
        "recovery is a trace of its own, linked, not a child"
    );
    println!(
        "tracing: trace {trace_id}: {} spans; recovery trace {} links to span {}",
        spans.len(),
        recovery.trace_id,
        handle.span_id
    );
}

/// Microseconds since the epoch as RFC 3339 (UTC), as Jaeger's query API takes times.
fn rfc3339(micros: u128) -> String {
    let secs = (micros / 1_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}
