//! The metrics contract (`docs/metrics.md`): a whole stack — the Rust sample shopping cart, its
//! processor, a gateway and the cart's projector — on the real Kafka and Cassandra, driven with
//! commands (one failing), a backup round and folded events; then every role's `/metrics` is
//! scraped and checked against the table, parsed here: each row's metric is exported by the
//! role(s) its Role column names, with the type it names, and nothing `statehouse_…` is exported
//! that the table lacks. The gateway's RED metrics carry the service and method of each call;
//! paths no registered service has count under `unknown`.
//!
//! Rows whose role is `processor (CRDT)` are exported only by processors of a service with CRDT
//! entities, after their first broadcast record; the cart has none, so for those the test
//! checks the name is declared in `processor/src/metrics.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart};
use statehouse_test_support::http;
use statehouse_test_support::process::{Statehouse, free_port};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

const SERVICE: &str = "shopping-cart";
const GRPC_SERVICE: &str = "com.example.shoppingcart.ShoppingCart";
const PARTITIONS: u32 = 4;

/// One row of the table.
#[derive(Debug)]
struct Row {
    name: String,
    kind: String,
    roles: Vec<String>,
}

/// The rows of `docs/metrics.md`'s table: `| `name` | type | labels | role | meaning |`.
fn contract() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("reading docs/metrics.md");
    let rows: Vec<Row> = text
        .lines()
        .filter(|l| l.starts_with("| `statehouse_"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert!(
                cells.len() >= 5,
                "a row of docs/metrics.md has 5 cells: {l}"
            );
            Row {
                name: cells[0].trim_matches('`').to_string(),
                kind: cells[1].to_string(),
                roles: cells[3].split(',').map(|r| r.trim().to_string()).collect(),
            }
        })
        .collect();
    assert!(rows.len() > 30, "docs/metrics.md's table has its rows");
    rows
}

fn scrape(addr: &str) -> String {
    let answer = http::request(addr, "GET", "/metrics", &[], None)
        .unwrap_or_else(|e| panic!("scraping {addr}/metrics: {e}"));
    assert_eq!(answer.status, 200, "{addr}/metrics");
    answer.body
}

/// The exported metrics of a scrape: name → the type of its `# TYPE` line.
fn exported(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The samples of `name` (exactly that series name) in a scrape, as (labels, value).
fn samples(body: &str, name: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (series_name, labels) = match series.split_once('{') {
                Some((n, labels)) => (n, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            (series_name == name).then(|| (labels.to_string(), value.parse().ok()))
        })
        .filter_map(|(labels, value)| Some((labels, value?)))
        .collect()
}

fn sum(body: &str, name: &str) -> f64 {
    samples(body, name).iter().map(|(_, v)| v).sum()
}

/// Scrape `addr` until `done` holds for its body (each wait bounded; no timing is asserted).
fn wait_for(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = scrape(addr);
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: not within 120 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_of_the_table_is_exported_by_its_role() {
    let mut options = Options::new(Kind::RustShoppingCart);
    options.partitions = PARTITIONS;
    let stack = Stack::start_ready(options);

    // A gateway of our own, with a metrics port we know (the stack's learns the same registry).
    let (client_port, gateway_metrics) = (free_port(), free_port());
    let mut sets = stack.common_sets();
    sets.push(format!("gateway.listen=\"127.0.0.1:{client_port}\""));
    sets.push(format!(
        "gateway.metrics-listen=\"127.0.0.1:{gateway_metrics}\""
    ));
    let _gateway = Statehouse::start("gateway", &sets);
    let gateway_addr = format!("127.0.0.1:{client_port}");
    let gateway_metrics = format!("127.0.0.1:{gateway_metrics}");

    // The cart's projector (the Rust sample serves its projection on the user function's port).
    let (query, projector_metrics) = (free_port(), free_port());
    let mut sets = stack.common_sets();
    sets.extend([
        format!("projector.service={SERVICE}"),
        format!(
            "projector.handler-port={}",
            stack.pods[0].user_function.port()
        ),
        format!("projector.listen=\"127.0.0.1:{query}\""),
        format!("projector.metrics-listen=\"127.0.0.1:{projector_metrics}\""),
        "projector.poll-interval-ms=300".to_string(),
    ]);
    let _projector = Statehouse::start("projector", &sets);
    let projector_metrics = format!("127.0.0.1:{projector_metrics}");
    let processor_metrics = format!("{}:{}", stack.pods[0].host, stack.pods[0].metrics_port);

    // Commands through our gateway: adds over several carts (every partition is likely hit),
    // a read, and one failing add (a quantity <= 0 is refused by the cart).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut client = loop {
        if let Ok(client) = ShoppingCartClient::connect(format!("http://{gateway_addr}")).await {
            break client;
        }
        assert!(Instant::now() < deadline, "our gateway never listened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        match client
            .get_cart(GetShoppingCart {
                user_id: "warm-up".into(),
            })
            .await
        {
            Ok(_) => break,
            Err(s) if Instant::now() < deadline => {
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::Unimplemented | tonic::Code::Unavailable
                    ),
                    "{s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("our gateway does not serve the cart within 90 s: {s:?}"),
        }
    }
    for i in 0..20 {
        client
            .add_item(AddLineItem {
                user_id: format!("cart-{i}"),
                product_id: "apple".into(),
                name: "Apple".into(),
                quantity: 1 + i,
            })
            .await
            .unwrap_or_else(|s| panic!("AddItem cart-{i}: {s}"));
    }
    let failed = client
        .add_item(AddLineItem {
            user_id: "cart-0".into(),
            product_id: "pear".into(),
            name: "Pear".into(),
            quantity: -1,
        })
        .await
        .expect_err("a negative quantity is refused");
    let failed_code = format!("{:?}", failed.code());

    // Paths no registered service has: counted, but under `unknown` (bounded label sets). The
    // warm-up's UNIMPLEMENTED answers (the gateway did not know the service yet) count there
    // too: what the two calls add is measured.
    let unknown_unimplemented = |body: &str| -> f64 {
        samples(body, "statehouse_gateway_calls_total")
            .iter()
            .filter(|(labels, _)| {
                labels.contains("service=\"unknown\"")
                    && labels.contains("method=\"unknown\"")
                    && labels.contains("code=\"Unimplemented\"")
            })
            .map(|(_, v)| v)
            .sum()
    };
    let unknown_before = {
        let addr = gateway_metrics.clone();
        unknown_unimplemented(&blocking(move || scrape(&addr)).await)
    };
    for path in ["/com.example.Nope/Nope", "/x.Y/Z"] {
        let channel = tonic::transport::Channel::from_shared(format!("http://{gateway_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, GetShoppingCart, _>(
                tonic::Request::new(GetShoppingCart {
                    user_id: "nobody".into(),
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::<GetShoppingCart, GetShoppingCart>::default(),
            )
            .await
            .expect_err("an unknown method fails");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
    }

    // A backup round, the projector's folds, all partitions serving and their last stable
    // offsets watched (journal and values topics): waited for, not timed.
    let processor = {
        let addr = processor_metrics.clone();
        blocking(move || {
            wait_for(
                &addr,
                "a backup round, every partition serving and its LSO watched",
                |body| {
                    sum(body, "statehouse_backup_records_total") > 0.0
                        && sum(body, "statehouse_partitions_serving") == f64::from(PARTITIONS)
                        && samples(body, "statehouse_partition_lso_stuck_seconds").len()
                            == 2 * PARTITIONS as usize
                },
            )
        })
        .await
    };
    let projector = {
        let addr = projector_metrics.clone();
        blocking(move || {
            wait_for(&addr, "the projector folding events", |body| {
                sum(body, "statehouse_projection_events_total") > 0.0
                    && !samples(body, "statehouse_projection_delay_seconds_count").is_empty()
            })
        })
        .await
    };
    let gateway = {
        let addr = gateway_metrics.clone();
        blocking(move || scrape(&addr)).await
    };

    // Every row is exported by each role it names, with its type.
    let scrapes: BTreeMap<&str, &str> = [
        ("gateway", gateway.as_str()),
        ("processor", processor.as_str()),
        ("projector", projector.as_str()),
    ]
    .into();
    let declared = include_str!("../../processor/src/metrics.rs");
    let rows = contract();
    let mut missing = Vec::new();
    for row in &rows {
        for role in &row.roles {
            if role.ends_with(" (TLS)") {
                // Only with TLS configured: `tls.rs` scrapes it; here it is declared.
                assert!(
                    include_str!("../../runtime/src/metrics.rs")
                        .contains(&format!("\"{}\"", row.name)),
                    "{} (a TLS metric) is declared in runtime/src/metrics.rs",
                    row.name
                );
                continue;
            }
            if role == "processor (CRDT)" {
                assert!(
                    declared.contains(&format!("\"{}\"", row.name)),
                    "{} (a CRDT service's metric) is declared in processor/src/metrics.rs",
                    row.name
                );
                continue;
            }
            let body = scrapes.get(role.as_str()).unwrap_or_else(|| {
                panic!("{}: unknown role {role:?} in docs/metrics.md", row.name)
            });
            match exported(body).get(&row.name) {
                Some(kind) if *kind == row.kind => {}
                Some(kind) => missing.push(format!(
                    "{} is a {kind} on the {role}, the table says {}",
                    row.name, row.kind
                )),
                None => missing.push(format!("{} is not exported by the {role}", row.name)),
            }
        }
    }
    // Nothing `statehouse_…` is exported that the table lacks.
    for (role, body) in &scrapes {
        for name in exported(body).keys() {
            if name.starts_with("statehouse_") && !rows.iter().any(|r| &r.name == name) {
                missing.push(format!(
                    "the {role} exports {name}, which is not in docs/metrics.md"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the metrics contract is broken:\n{}",
        missing.join("\n")
    );

    // RED per service and method at the gateway.
    let calls = samples(&gateway, "statehouse_gateway_calls_total");
    let has = |method: &str, code: &str| {
        calls.iter().any(|(labels, value)| {
            labels.contains(&format!("service=\"{GRPC_SERVICE}\""))
                && labels.contains(&format!("method=\"{method}\""))
                && labels.contains("protocol=\"grpc\"")
                && labels.contains(&format!("code=\"{code}\""))
                && *value >= 1.0
        })
    };
    assert!(has("AddItem", "Ok"), "AddItem calls counted: {calls:?}");
    assert!(has("GetCart", "Ok"), "GetCart calls counted: {calls:?}");
    assert_ne!(failed_code, "Ok");
    assert!(
        has("AddItem", &failed_code),
        "the failed AddItem counted with code {failed_code}: {calls:?}"
    );
    let ok_adds: f64 = calls
        .iter()
        .filter(|(l, _)| l.contains("method=\"AddItem\"") && l.contains("code=\"Ok\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(ok_adds, 20.0, "every successful AddItem counted once");
    assert_eq!(
        unknown_unimplemented(&gateway) - unknown_before,
        2.0,
        "unknown paths counted as unknown: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|(labels, _)| !labels.contains("Nope") && !labels.contains("x.Y")),
        "no label of a path nobody serves: {calls:?}"
    );
    let durations = samples(&gateway, "statehouse_gateway_call_seconds_count");
    assert!(
        durations.iter().any(
            |(labels, v)| labels.contains(&format!("service=\"{GRPC_SERVICE}\""))
                && labels.contains("method=\"AddItem\"")
                && *v >= 21.0
        ),
        "AddItem durations recorded per method: {durations:?}"
    );

    // The processor's own view agrees with what happened.
    let partitions = samples(&processor, "statehouse_service_partitions");
    assert_eq!(
        partitions,
        [(format!("service=\"{SERVICE}\""), f64::from(PARTITIONS))],
        "the service's partitions"
    );
    assert_eq!(
        sum(&processor, "statehouse_partitions_owned"),
        f64::from(PARTITIONS)
    );
    assert_eq!(sum(&processor, "statehouse_partitions_recovering"), 0.0);
    assert!(
        samples(&processor, "statehouse_commands_total")
            .iter()
            .any(|(labels, v)| labels == "outcome=\"failure\"" && *v >= 1.0),
        "the failed command counted as a failure"
    );
    assert!(sum(&processor, "statehouse_writer_transactions_total") >= 20.0);
}
