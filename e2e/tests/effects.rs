//! Forwards and side effects across processors and services, through the router the gateway
//! and the processors share.
//!
//! Two services on one Kafka and Cassandra: `relay` (two processors, each the sidecar of a relay
//! user function on the Rust SDK: an event-sourced entity that counts its calls and relays side
//! effects and a forward as each request says) and `tck` (the Go SDK's TCK user function). A
//! relay entity forwards to, and runs side effects on, an entity another processor owns, and an
//! entity of the other service. With the other service's processor down, a forward is retried
//! until the caller's deadline and then fails (UNAVAILABLE, or DEADLINE_EXCEEDED when the
//! caller's own deadline passes first), an asynchronous side effect does not fail its call, and
//! a forward that is still being retried when the target comes back succeeds.
//!
//! Every processor-to-processor call here runs over mTLS (`[internal-tls]`: client certificates
//! required, the peers' names checked; `docs/tls.md`), so forwards and side effects are also the
//! test of the routers' client certificates; the gateway's client port stays plaintext.

use std::time::{Duration, Instant};

use statehouse_e2e::proto::relay::relay_client::RelayClient;
use statehouse_e2e::proto::relay::{RelayRequest, Target};
use statehouse_e2e::proto::tck::valueentity::value_entity_tck_model_client::ValueEntityTckModelClient;
use statehouse_e2e::proto::tck::valueentity::{self as ve, RequestAction, request_action};
use statehouse_e2e::relay;
use statehouse_e2e::tls::{internal_tls_sets, mint};
use statehouse_runtime::router::{Registry, feed};
use statehouse_test_support::process::{Statehouse, free_port};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use statehouse_test_support::{http, kafka_bootstrap, unique};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const TCK_MODEL: &str = "cloudstate.tck.model.valueentity.ValueEntityTckModel";
/// The name the processors' certificate carries and their peers must present.
const NAME: &str = "statehouse.internal";

/// A relay processor and its in-process user function.
struct RelayPod {
    processor: Statehouse,
    metrics_port: u16,
    endpoint: String,
}

async fn start_relay(stack: &Stack, stop: &CancellationToken) -> RelayPod {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uf_port = listener.local_addr().unwrap().port();
    tokio::spawn(relay::serve("relay", listener, stop.clone()));
    let (internal_port, metrics_port) = (free_port(), free_port());
    let mut sets = stack.common_sets();
    sets.extend([
        "processor.service=relay".to_string(),
        format!("processor.listen=\"127.0.0.1:{internal_port}\""),
        format!("processor.metrics-listen=\"127.0.0.1:{metrics_port}\""),
        format!("processor.user-function-port={uf_port}"),
    ]);
    RelayPod {
        processor: Statehouse::start("processor", &sets),
        metrics_port,
        endpoint: format!("https://127.0.0.1:{internal_port}"),
    }
}

/// The sum of a processor's samples of metric `name` (0 when it does not answer).
fn metric(pod: &RelayPod, name: &str) -> f64 {
    http::metric_sum(&format!("127.0.0.1:{}", pod.metrics_port), name)
}

fn serving_partitions(pod: &RelayPod) -> f64 {
    metric(pod, "statehouse_partitions_serving")
}

fn retries(pod: &RelayPod) -> f64 {
    metric(pod, "statehouse_router_retries_total")
}

fn tck_update(id: &str, value: &str) -> ve::Request {
    ve::Request {
        id: id.into(),
        actions: vec![RequestAction {
            action: Some(request_action::Action::Update(ve::Update {
                value: value.into(),
            })),
        }],
    }
}

fn relay_to(id: &str, forward: Option<Target>, side_effects: Vec<Target>) -> RelayRequest {
    RelayRequest {
        id: id.into(),
        side_effects,
        forward,
    }
}

async fn call(
    client: &mut RelayClient<Channel>,
    request: RelayRequest,
    timeout: Duration,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    client.relay(request).await.map(|r| r.into_inner().message)
}

/// An entity id of service `relay` that `endpoint` owns, distinct from `taken`.
fn owned_by(registry: &Registry, endpoint: &str, partitions: u32, taken: &[String]) -> String {
    (0..1_000)
        .map(|i| format!("r{i}"))
        .find(|id| {
            let partition = statehouse_core::partition_for(id.as_bytes(), partitions);
            !taken.contains(id)
                && registry
                    .owner("relay", partition)
                    .is_some_and(|o| o.endpoint == endpoint)
        })
        .unwrap_or_else(|| panic!("no relay entity is owned by {endpoint}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_and_side_effects_reach_other_processors_and_services() {
    let certs = std::env::temp_dir().join(unique("statehouse-e2e-effects"));
    mint(&certs, NAME);
    let mut options = Options::new(Kind::GoTck);
    options.service = "tck".into();
    options.common_sets = internal_tls_sets(&certs, NAME);
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let stop = CancellationToken::new();
    let pods = [
        start_relay(&stack, &stop).await,
        start_relay(&stack, &stop).await,
    ];
    // The routing table, as any router sees it.
    let registry = Registry::new();
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: stack.prefix.clone(),
        ..statehouse_kafka::Options::default()
    };
    {
        let (registry, stop) = (registry.clone(), stop.clone());
        tokio::spawn(async move { feed::run(&kafka, registry, stop).await });
    }
    let partitions = stack.options.partitions;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Each pod serves partitions and the routing table says so (a partition the group
        // assigned is in the table only once its new owner took it over).
        let split = pods.iter().all(|pod| {
            serving_partitions(pod) > 0.0
                && (0..partitions).any(|p| {
                    registry
                        .owner("relay", p)
                        .is_some_and(|o| o.endpoint == pod.endpoint)
                })
        });
        let routed = (0..partitions).all(|p| {
            registry
                .owner("relay", p)
                .is_some_and(|o| pods.iter().any(|pod| pod.endpoint == o.endpoint))
        });
        if split && routed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay's partitions are not split between its two processors; logs: {}, {}",
            pods[0].processor.log_path().display(),
            pods[1].processor.log_path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RelayClient::new(channel.clone());
    let mut tck = ValueEntityTckModelClient::new(channel);
    let long = Duration::from_secs(60);

    // Same service, an entity another processor owns: a forward, and a synchronous side effect.
    let a = owned_by(&registry, &pods[0].endpoint, partitions, &[]);
    let b = owned_by(&registry, &pods[1].endpoint, partitions, &[]);
    let c = owned_by(
        &registry,
        &pods[1].endpoint,
        partitions,
        std::slice::from_ref(&b),
    );
    let to_b = relay::target(relay::SERVICE, "Relay", &relay_to(&b, None, vec![]), false);
    assert_eq!(
        call(&mut client, relay_to(&a, Some(to_b), vec![]), long)
            .await
            .unwrap(),
        format!("{b}:1"),
        "the forward's reply is the other processor's entity's"
    );
    let to_c = relay::target(relay::SERVICE, "Relay", &relay_to(&c, None, vec![]), true);
    assert_eq!(
        call(&mut client, relay_to(&a, None, vec![to_c]), long)
            .await
            .unwrap(),
        format!("{a}:2")
    );
    assert_eq!(
        call(&mut client, relay_to(&c, None, vec![]), long)
            .await
            .unwrap(),
        format!("{c}:2"),
        "the side effect ran once, on the other processor"
    );

    // Another service: a forward and a synchronous side effect to a value entity of `tck`.
    let to_tck = relay::target(TCK_MODEL, "Process", &tck_update("v1", "via-relay"), false);
    assert_eq!(
        call(&mut client, relay_to(&a, Some(to_tck), vec![]), long)
            .await
            .unwrap(),
        "via-relay",
        "the other service's reply (a TCK Response decodes as a RelayReply)"
    );
    let effect = relay::target(TCK_MODEL, "Process", &tck_update("v2", "effect"), true);
    call(&mut client, relay_to(&a, None, vec![effect]), long)
        .await
        .unwrap();
    for (id, value) in [("v1", "via-relay"), ("v2", "effect")] {
        let got = tck
            .process(ve::Request {
                id: id.into(),
                actions: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .message;
        assert_eq!(got, value);
    }

    // The other service down: a forward is retried until the caller's deadline, then fails;
    // an asynchronous side effect does not fail its call. (The relay's own event, committed
    // before its effects run, stays: calls 5 and 6.)
    stack.pods[0].processor.kill9();
    let retries_before = retries(&pods[0]);
    let to_tck = relay::target(TCK_MODEL, "Process", &tck_update("v3", "lost"), false);
    // The deadline only as `grpc-timeout` (no client-side timer): Statehouse answers.
    let mut request = tonic::Request::new(relay_to(&a, Some(to_tck), vec![]));
    request
        .metadata_mut()
        .insert("grpc-timeout", "3000m".parse().unwrap());
    let status = client.relay(request).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{status:?}"
    );
    assert!(
        retries(&pods[0]) > retries_before,
        "the forward was retried before it failed: {status:?}"
    );
    let async_effect = relay::target(TCK_MODEL, "Process", &tck_update("v4", "x"), false);
    assert_eq!(
        call(&mut client, relay_to(&a, None, vec![async_effect]), long)
            .await
            .unwrap(),
        format!("{a}:6")
    );

    // A forward still being retried when the target comes back succeeds.
    let to_tck = relay::target(TCK_MODEL, "Process", &tck_update("v5", "late"), false);
    let mut retrying = client.clone();
    let pending = tokio::spawn(async move {
        call(
            &mut retrying,
            relay_to(&a, Some(to_tck), vec![]),
            Duration::from_secs(90),
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.pods[0].processor.restart();
    assert_eq!(pending.await.unwrap().unwrap(), "late");
    let got = tck
        .process(ve::Request {
            id: "v5".into(),
            actions: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .message;
    assert_eq!(got, "late");
    stop.cancel();
}
