//! The gateway's web console (`gateway/src/console/`) on a whole stack — the Rust sample cart,
//! a processor and gateways as real processes on the real Kafka and Cassandra: its JSON API
//! (services, partitions with owners and backup checkpoints, charts sampled from the gateway's
//! own calls, lag, the entity inspector with the cart's events decoded), clear 4xx answers, the
//! admin token guarding erasure, a read-only and a disabled console, and then a real browser
//! (Debian's chromium driven by playwright-core, `e2e/console/check.mjs`) over the pages. The
//! browser's screenshot of the inspector is saved as `docs/console.png`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart};
use statehouse_test_support::http;
use statehouse_test_support::process::{Statehouse, free_port};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::transport::Channel;

const SERVICE: &str = "shopping-cart";
const TOKEN: &str = "console-test-token-8c1f";
const CHROMIUM: &str = "/usr/bin/chromium";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is in the workspace")
        .to_path_buf()
}

/// Chromium and the browser script's node_modules are there, or the test fails with the fix.
fn require_browser() -> PathBuf {
    let dir = workspace().join("e2e/console");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install it with `apt-get install -y chromium` (.ci/run does)"
    );
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .exists(),
        "e2e/console/node_modules is missing: run `PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix e2e/console` (.ci/run does)"
    );
    dir
}

/// A gateway of the stack's services with `sets` on top; returns it with (client address,
/// console address).
fn start_gateway(stack: &Stack, sets: &[String]) -> (Statehouse, String, String) {
    let (port, metrics_port) = (free_port(), free_port());
    let mut all = stack.common_sets();
    all.push(format!("gateway.listen=\"127.0.0.1:{port}\""));
    all.push(format!(
        "gateway.metrics-listen=\"127.0.0.1:{metrics_port}\""
    ));
    all.extend(sets.iter().cloned());
    let gateway = Statehouse::start("gateway", &all);
    let console = format!("127.0.0.1:{metrics_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&console).is_err() {
        assert!(
            Instant::now() < deadline,
            "the gateway did not listen on {console}; log: {}",
            gateway.log_path().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (gateway, format!("127.0.0.1:{port}"), console)
}

fn get(addr: &str, path: &str) -> http::Response {
    http::request(addr, "GET", path, &[], None)
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

fn get_json(addr: &str, path: &str) -> Value {
    let response = get(addr, path);
    assert_eq!(response.status, 200, "GET {path}: {}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", response.body))
}

fn post_form(addr: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> http::Response {
    let mut all = vec![
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Accept", "application/json"),
    ];
    all.extend_from_slice(headers);
    http::request(addr, "POST", path, &all, Some(body))
        .unwrap_or_else(|e| panic!("POST {path} on {addr}: {e}"))
}

/// Poll `path` until `ready` holds for its JSON (the backup and the sampler run on their own
/// clocks); fails with the last answer after 90 s.
fn wait_json(addr: &str, path: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let value = get_json(addr, path);
        if ready(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 90 s; last {path}: {value:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

async fn cart_client(addr: &str) -> ShoppingCartClient<Channel> {
    let mut client = ShoppingCartClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut request = tonic::Request::new(GetShoppingCart {
            user_id: "warm-up".into(),
        });
        request.set_timeout(Duration::from_secs(30));
        match client.get_cart(request).await {
            Ok(_) => return client,
            Err(s)
                if tokio::time::Instant::now() < deadline
                    && matches!(
                        s.code(),
                        tonic::Code::Unimplemented | tonic::Code::Unavailable
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("the console's gateway does not serve within 90 s: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_the_stack_and_passes_a_browser_check() {
    let browser_dir = require_browser();
    let stack = Stack::start(Options::new(Kind::RustShoppingCart));
    let token_dir = std::env::temp_dir().join(statehouse_test_support::unique("console-token"));
    std::fs::create_dir_all(&token_dir).unwrap();
    let token_file = token_dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

    let (admin_gateway, admin_client, console) = start_gateway(
        &stack,
        &[
            format!(
                "gateway.console.admin-token-file=\"{}\"",
                token_file.display()
            ),
            "gateway.console.sample-interval-ms=1000".into(),
        ],
    );
    let (_read_only, _, read_only) = start_gateway(&stack, &[]);
    let (_disabled, _, disabled) = start_gateway(&stack, &["gateway.console.enabled=false".into()]);

    // Carts through the admin console's gateway, so its charts have calls to show.
    let mut client = cart_client(&admin_client).await;
    for (user, product, name, quantity) in [
        ("ada", "apple", "Apple", 2),
        ("ada", "pear", "Pear", 1),
        ("ada", "fig", "Fig", 4),
        ("bob", "kiwi", "Kiwi", 9),
    ] {
        client
            .add_item(AddLineItem {
                user_id: user.into(),
                product_id: product.into(),
                name: name.into(),
                quantity,
            })
            .await
            .unwrap_or_else(|s| panic!("AddItem {user} {product}: {s}"));
    }

    let console_ = console.clone();
    tokio::task::spawn_blocking(move || check_api(&console_, &read_only, &disabled))
        .await
        .unwrap();

    // The browser over the pages; its screenshot of the inspector becomes docs/console.png.
    let screenshot = workspace().join("docs/console.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new("node")
        .current_dir(&browser_dir)
        .args(["check.mjs", &format!("http://{console}"), SERVICE, "ada"])
        .arg(&screenshot)
        .args(["Apple", "Pear", "Fig"])
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .output()
        .expect("running node (install nodejs) e2e/console/check.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser check failed ({}):\n{stdout}\n{stderr}\ngateway log: {}",
        output.status,
        admin_gateway.log_path().display()
    );
    assert!(
        stdout.contains("partitions page: 4 partitions, each with an owner"),
        "{stdout}"
    );
    assert!(
        stdout.contains("entity inspector: 3 event(s) of ada"),
        "{stdout}"
    );
    assert!(stdout.contains("console check ok"), "{stdout}");
    let png = std::fs::read(&screenshot).expect("the browser saved docs/console.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a screenshot"
    );

    // Erase through the console, with the token; the inspector then shows no events.
    let console_ = console.clone();
    tokio::task::spawn_blocking(move || check_erase(&console_))
        .await
        .unwrap();
    std::fs::remove_dir_all(&token_dir).unwrap();
}

fn check_api(console: &str, read_only: &str, disabled: &str) {
    // Services: the registry's, with the entity type and the processor.
    let services = get_json(console, "/console/api/services");
    let cart = services
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == SERVICE))
        .unwrap_or_else(|| panic!("{SERVICE} not listed: {services:#}"));
    assert_eq!(cart["partitions"], 4, "{cart:#}");
    assert_eq!(
        cart["processors"].as_array().map(Vec::len),
        Some(1),
        "{cart:#}"
    );
    let grpc = &cart["grpc_services"][0];
    assert_eq!(
        grpc["name"], "com.example.shoppingcart.ShoppingCart",
        "{cart:#}"
    );
    assert_eq!(
        grpc["entity_type"], "cloudstate.eventsourced.EventSourced",
        "{cart:#}"
    );

    // Partitions: every one owned, journal ends and checkpoints from Kafka and Cassandra; the
    // backup catches up with the four events.
    let partitions = wait_json(
        console,
        "/console/api/partitions?service=shopping-cart",
        "the backup holding the journal",
        |v| {
            v["partitions"].as_array().is_some_and(|ps| {
                ps.iter()
                    .map(|p| p["backup_checkpoint"].as_i64().unwrap_or(0))
                    .sum::<i64>()
                    >= 4
            })
        },
    );
    assert_eq!(
        partitions["inspection_error"],
        Value::Null,
        "{partitions:#}"
    );
    let ps = partitions["partitions"].as_array().unwrap();
    assert_eq!(ps.len(), 4);
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(p["partition"], i, "{p:#}");
        assert!(
            p["owner"]["endpoint"].is_string(),
            "partition {i} has no owner: {p:#}"
        );
        assert!(
            p["owner"]["epoch"].as_i64().is_some_and(|e| e >= 0),
            "{p:#}"
        );
        let end = p["journal_end"].as_i64().unwrap();
        let checkpoint = p["backup_checkpoint"].as_i64().unwrap();
        assert!(
            checkpoint <= end,
            "a checkpoint past the journal's end: {p:#}"
        );
    }
    let ends: i64 = ps.iter().map(|p| p["journal_end"].as_i64().unwrap()).sum();
    assert!(
        ends >= 4,
        "four events, journal ends {ends}: {partitions:#}"
    );

    // Charts: the sampler saw the calls, OK ones as such, with a latency.
    let charts = wait_json(console, "/console/api/charts", "a sample with calls", |v| {
        v["samples"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                let calls = s["calls_per_s"].as_f64().unwrap_or(0.0);
                calls > 0.0
                    && calls > s["errors_per_s"].as_f64().unwrap_or(0.0)
                    && s["mean_ms"].as_f64().is_some_and(|m| m > 0.0)
                    && s["p99_ms"].as_f64().is_some_and(|p| p > 0.0)
            })
        })
    });
    assert_eq!(charts["interval_ms"], 1000);
    assert_eq!(charts["window_ms"], 900_000);
    let page = get(console, "/console/charts");
    assert!(
        page.body.contains("<svg id=\"throughput\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("<polyline"),
        "no line drawn: {}",
        page.body
    );

    // Lag: the service's backup lag is known, no projections.
    let lag = get_json(console, "/console/api/lag");
    let cart_lag = lag
        .as_array()
        .and_then(|l| l.iter().find(|l| l["service"] == SERVICE))
        .unwrap_or_else(|| panic!("{lag:#}"));
    assert_eq!(cart_lag["error"], Value::Null, "{cart_lag:#}");
    assert!(cart_lag["backup_lag"].as_i64().is_some(), "{cart_lag:#}");
    assert_eq!(
        cart_lag["projections"],
        Value::Array(vec![]),
        "{cart_lag:#}"
    );

    // The inspector: ada's three events, decoded, in order.
    let ada = get_json(console, "/console/api/entity?service=shopping-cart&key=ada");
    assert_eq!(ada["entity_id"], "ada", "{ada:#}");
    assert_eq!(ada["kind"], "event-sourced", "{ada:#}");
    let events = ada["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{ada:#}");
    for (i, name) in ["Apple", "Pear", "Fig"].iter().enumerate() {
        assert_eq!(events[i]["seq"], i + 1, "{ada:#}");
        assert!(
            events[i]["type_url"]
                .as_str()
                .unwrap()
                .ends_with("ItemAdded"),
            "{ada:#}"
        );
        assert!(events[i]["event"].to_string().contains(name), "{ada:#}");
    }
    let html = get(console, "/console/entity?service=shopping-cart&key=ada");
    assert_eq!(html.status, 200);
    assert!(
        html.body.contains("id=\"erase\""),
        "the admin console offers erasure"
    );
    assert!(
        html.header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'none'"))
    );

    // Bad requests are clear 4xx.
    for (path, status, says) in [
        (
            "/console/api/partitions",
            400,
            "service parameter is missing",
        ),
        (
            "/console/api/partitions?service=no-such",
            404,
            "unknown to the registry",
        ),
        ("/console/api/partitions?servce=x", 400, "unknown parameter"),
        (
            "/console/api/entity?service=shopping-cart",
            400,
            "key parameter is missing",
        ),
        (
            "/console/api/entity?service=shopping-cart&key=%FF",
            400,
            "UTF-8",
        ),
        ("/console/api/nothing", 404, "no console page"),
        (
            "/console/entity?service=shopping-cart",
            400,
            "both a service and an entity key",
        ),
    ] {
        let answer = get(console, path);
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert!(answer.body.contains(says), "{path}: {}", answer.body);
    }

    // Without the token, nothing is erased; a console without a token file is read-only.
    let erase = "service=shopping-cart&key=bob&reason=test";
    let no_token = post_form(console, "/console/entity/erase", erase, &[]);
    assert_eq!(no_token.status, 401, "{}", no_token.body);
    let wrong = post_form(
        console,
        "/console/entity/erase",
        &format!("{erase}&token=guess"),
        &[],
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let bearer_wrong = format!("Bearer {TOKEN}x");
    let wrong = post_form(
        console,
        "/console/entity/erase",
        erase,
        &[("Authorization", &bearer_wrong)],
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let ro = post_form(
        read_only,
        "/console/entity/erase",
        &format!("{erase}&token={TOKEN}"),
        &[],
    );
    assert_eq!(ro.status, 403, "{}", ro.body);
    assert!(ro.body.contains("read-only"), "{}", ro.body);
    let ro_page = get(read_only, "/console/entity?service=shopping-cart&key=bob");
    assert_eq!(ro_page.status, 200, "{}", ro_page.body);
    assert!(
        !ro_page.body.contains("id=\"erase\""),
        "a read-only console offers no erasure"
    );
    assert!(!ro_page.body.contains(TOKEN));
    let bob = get_json(console, "/console/api/entity?service=shopping-cart&key=bob");
    assert_eq!(bob["events"].as_array().map(Vec::len), Some(1), "{bob:#}");

    // Disabled: only the metrics and health routes.
    assert_eq!(get(disabled, "/console").status, 404);
    assert_eq!(get(disabled, "/console/api/services").status, 404);
    assert_eq!(get(disabled, "/healthz").status, 200);
    assert!(get(disabled, "/metrics").body.contains("# TYPE"));
}

fn check_erase(console: &str) {
    let missing_reason = post_form(
        console,
        "/console/entity/erase",
        &format!("service=shopping-cart&key=bob&token={TOKEN}"),
        &[],
    );
    assert_eq!(missing_reason.status, 400, "{}", missing_reason.body);
    let bearer = format!("Bearer {TOKEN}");
    let erased = post_form(
        console,
        "/console/entity/erase",
        "service=shopping-cart&key=bob&reason=console+e2e",
        &[("Authorization", &bearer)],
    );
    assert_eq!(erased.status, 200, "{}", erased.body);
    let report: Value = serde_json::from_str(&erased.body).unwrap();
    assert_eq!(report["entity_id"], "bob", "{report:#}");
    assert_eq!(report["journal_tombstones"], 1, "{report:#}");
    let bob = get_json(console, "/console/api/entity?service=shopping-cart&key=bob");
    assert_eq!(bob["events"], Value::Array(vec![]), "{bob:#}");
    let ada = get_json(console, "/console/api/entity?service=shopping-cart&key=ada");
    assert_eq!(
        ada["events"].as_array().map(Vec::len),
        Some(3),
        "ada is untouched: {ada:#}"
    );
}
