//! An **external** projection (`TARGET_EXTERNAL`, `docs/projections.md`): the read model lives
//! in the handler's own store, and the handler gets batches (`HandleBatch`) it applies
//! idempotently by (entity, seq) — the last seq per entity kept in the same "transaction" as
//! the read model (here one mutex). Cart commands run while the projector is `kill -9`ed every
//! 3 s; the projector must deliver every event, each entity's in seq order (the handler refuses
//! a gap, which would hold the batch for ever), and carry the generation: the handler's read
//! model ends equal to an independent read_committed fold of the journal. (That an event
//! delivered again is applied once is the handler's part here.) Its rows are not served by the
//! projector's query API (`FAILED_PRECONDITION`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statehouse_e2e::carts::{self, Carts};
use statehouse_schemas::avro::EventRecord;
use statehouse_schemas::statehouse::projection::v1 as pb;
use statehouse_schemas::statehouse::projection::v1::projection_handler_server::{
    ProjectionHandler, ProjectionHandlerServer,
};
use statehouse_schemas::statehouse::projection::v1::projections_client::ProjectionsClient;
use statehouse_test_support::kafka_bootstrap;
use statehouse_test_support::process::{Statehouse, free_port};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::{Request, Response, Status};

const SERVICE: &str = "shopping-cart";
const NAME: &str = "cart-lines";
const PARTITIONS: u32 = 4;
const CARTS: usize = 100;
const COMMANDS: usize = 3_000;

/// The handler's own "database": the read model and the last seq applied per entity, changed
/// together.
#[derive(Default)]
struct Database {
    carts: Carts,
    applied: BTreeMap<String, i64>,
    /// Events delivered again (at or below the entity's applied seq), ignored.
    repeated: usize,
}

#[derive(Clone, Default)]
struct External {
    db: Arc<Mutex<Database>>,
}

#[tonic::async_trait]
impl ProjectionHandler for External {
    async fn describe(
        &self,
        _: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        Ok(Response::new(pb::DescribeResponse {
            projections: vec![pb::ProjectionSpec {
                name: NAME.into(),
                persistence_id: "shopping-cart".into(),
                target: pb::Target::External as i32,
            }],
        }))
    }

    async fn project(
        &self,
        _: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        Err(Status::unimplemented("an external projection only"))
    }

    async fn handle_batch(
        &self,
        request: Request<pb::EventBatch>,
    ) -> Result<Response<pb::Ack>, Status> {
        let batch = request.into_inner();
        if batch.generation != 1 {
            return Err(Status::invalid_argument(format!(
                "generation {} (no reset in this test)",
                batch.generation
            )));
        }
        let mut db = self.db.lock().unwrap();
        let mut applied = 0;
        for event in batch.events {
            let last = db.applied.get(&event.entity_id).copied().unwrap_or(0);
            if event.seq <= last {
                db.repeated += 1;
                continue;
            }
            if event.seq != last + 1 {
                return Err(Status::failed_precondition(format!(
                    "{} seq {} after {last}",
                    event.entity_id, event.seq
                )));
            }
            let record = EventRecord {
                service: event.service,
                persistence_id: event.persistence_id,
                entity_id: event.entity_id.clone(),
                seq: event.seq,
                type_url: event.type_url,
                payload: event.payload,
                command_id: None,
                idempotency_key: None,
                timestamp_ms: event.timestamp_unix_ms,
                writer: statehouse_schemas::avro::Writer {
                    processor_id: String::new(),
                    epoch: 0,
                },
                snapshot: None,
                traceparent: None,
                reply: None,
            };
            carts::apply(
                db.carts.entry(event.entity_id.clone()).or_default(),
                &record,
            );
            db.applied.insert(event.entity_id, event.seq);
            applied += 1;
        }
        Ok(Response::new(pb::Ack { applied }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_external_projection_applies_each_event_once_across_kills() {
    let mut options = Options::new(Kind::RustShoppingCart);
    options.partitions = PARTITIONS;
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));

    let handler = External::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handler_port = listener.local_addr().unwrap().port();
    {
        let handler = handler.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ProjectionHandlerServer::new(handler))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
    }
    let query_port = free_port();
    let mut sets = stack.common_sets();
    sets.extend([
        format!("projector.service={SERVICE}"),
        format!("projector.handler-port={handler_port}"),
        format!("projector.listen=\"127.0.0.1:{query_port}\""),
        format!("projector.metrics-listen=\"127.0.0.1:{}\"", free_port()),
        "projector.poll-interval-ms=300".to_string(),
    ]);
    let mut projector = Statehouse::start("projector", &sets);

    let gateway = stack.gateway_addr.clone();
    let driving = carts::drive(&gateway, CARTS, 0, COMMANDS, false);
    tokio::pin!(driving);
    let mut kills: u32 = 0;
    loop {
        tokio::select! {
            _ = &mut driving => break,
            () = tokio::time::sleep(Duration::from_secs(3)) => {
                projector.kill9();
                projector.restart();
                kills += 1;
            }
        }
    }
    assert!(kills >= 1, "the load ended before the projector was killed");
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: stack.prefix.clone(),
        ..statehouse_kafka::Options::default()
    };
    let journal = carts::fold_journal(
        &kafka,
        &format!("{}{SERVICE}.journal", stack.prefix),
        PARTITIONS,
        "",
    )
    .await;
    assert_eq!(journal.len(), CARTS);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let same = handler.db.lock().unwrap().carts == journal;
        if same {
            break;
        }
        if Instant::now() >= deadline {
            let db = handler.db.lock().unwrap();
            carts::assert_same(&db.carts, &journal, "the external read model after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let repeated = handler.db.lock().unwrap().repeated;
    eprintln!("{COMMANDS} commands, {kills} projector kills, {repeated} events delivered again");

    // Its rows are the handler's: the projector does not serve them.
    // The query port opens once the projector is through its start (it was just restarted).
    let connect_by = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match ProjectionsClient::connect(format!("http://127.0.0.1:{query_port}")).await {
            Ok(client) => break client,
            Err(e) => {
                assert!(
                    Instant::now() < connect_by,
                    "the query port never opened: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let status = client
        .get(pb::GetRequest {
            projection: NAME.into(),
            entity_id: "cart-1".into(),
            after: Vec::new(),
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
}
