//! A processor started after the broadcast topic's old records are gone (deleted as retention
//! deletes expired segments) answers the same CRDT states: it bootstraps from the full states
//! the partition owners backed up to Cassandra, then reads the topic from their checkpoints.
//! Deleted entities stay deleted, and departed replicas are pruned with their counts kept.

use std::time::{Duration, Instant};

use statehouse_core::{ServiceName, Topics};
use statehouse_e2e::crdt::{Direct, SERVICE, delete, orset, pncounter as pn_value, request, up};
use statehouse_e2e::proto::tck::crdt::{self as model, request_action, update};
use statehouse_kafka::admin::Admin;
use statehouse_kafka::reader::{Isolation, end_offsets, read_to_end};
use statehouse_schemas::avro::{AvroRecord, CrdtDeltaRecord, CrdtRecordKind};
use statehouse_test_support::kafka_bootstrap;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

/// Processor `i`'s internal API.
fn at(stack: &Stack, i: usize) -> Direct {
    Direct::connect(stack.pods[i].internal_port)
}

fn pn(change: i64) -> request_action::Action {
    up(update::Update::Pncounter(model::PnCounterUpdate { change }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_started_after_the_topic_expired_bootstraps_from_the_backup() {
    let mut options = Options::new(Kind::GoTck);
    options.service = SERVICE.into();
    options.processors = 2;
    options.processor_sets.extend([
        "processor.crdt-heartbeat-interval-ms=300".to_string(),
        "processor.crdt-heartbeat-timeout-ms=1500".to_string(),
        // Replicas gone for 4 s are pruned (an hour by default).
        "processor.crdt-prune-after-ms=4000".to_string(),
    ]);
    let mut stack = Stack::start(options);
    for i in 0..2 {
        stack.wait_ready(i, Duration::from_secs(120));
    }
    at(&stack, 0).answer("PNCounter-warmup").await.unwrap();
    at(&stack, 1).answer("PNCounter-warmup").await.unwrap();

    // Both replicas count into the same entities; one entity is deleted.
    let ids: Vec<String> = (0..8).map(|n| format!("PNCounter-b{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        at(&stack, 0)
            .process(request(id, vec![pn(n as i64 + 1)]))
            .await
            .unwrap();
        at(&stack, 1)
            .process(request(id, vec![pn(10)]))
            .await
            .unwrap();
    }
    let set = "ORSet-b";
    at(&stack, 1)
        .process(request(
            set,
            vec![up(update::Update::Orset(model::OrSetUpdate {
                action: Some(model::or_set_update::Action::Add("kept".into())),
            }))],
        ))
        .await
        .unwrap();
    at(&stack, 0)
        .process(request(
            "GCounter-gone",
            vec![up(update::Update::Gcounter(model::GCounterUpdate {
                increment: 3,
            }))],
        ))
        .await
        .unwrap();
    at(&stack, 1)
        .process(request("GCounter-gone", vec![delete()]))
        .await
        .unwrap();
    let expected = |n: usize| pn_value(n as i64 + 11);
    for i in 0..2 {
        for (n, id) in ids.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while at(&stack, i).answer(id).await != Ok(expected(n)) {
                assert!(Instant::now() < deadline, "{id} on {i}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Processor 0 goes away for good; once gone longer than the prune delay, the partition
    // owners prune it: its counts move to the departed slot, the values stay.
    stack.pods[0].processor.kill9();
    let topic = Topics::new(stack.prefix.clone(), ServiceName::new(SERVICE).unwrap()).crdt();
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap(),
        ..statehouse_kafka::Options::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut prunes = 0;
        for p in 0..stack.options.partitions {
            for m in read_to_end(
                &kafka,
                &topic,
                p,
                0,
                Isolation::ReadCommitted,
                Duration::from_secs(30),
            )
            .await
            .unwrap()
            {
                let record = CrdtDeltaRecord::decode(&m.value.unwrap()).unwrap();
                if record.kind == CrdtRecordKind::Prune && ids.contains(&record.entity_id) {
                    prunes += 1;
                }
            }
        }
        if prunes >= ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {prunes} prunes of {} entities",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            at(&stack, 1).answer(id).await,
            Ok(expected(n)),
            "{id} after the prune"
        );
    }

    // Let the backup catch up, then delete every record of the topic, as retention would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = Admin::new(&kafka).unwrap();
    let mut ends = Vec::new();
    for p in 0..stack.options.partitions {
        let (end, _) = end_offsets(&kafka, &topic, p, Duration::from_secs(10))
            .await
            .unwrap();
        ends.push((p, end));
    }
    admin.truncate(&topic, &ends).await.unwrap();

    // A new processor, with nothing but the backup and the (now empty) topic.
    let new = stack.add_pod();
    stack.wait_ready(new, Duration::from_secs(120));
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            at(&stack, new).answer(id).await,
            Ok(expected(n)),
            "{id} on the new processor"
        );
    }
    assert_eq!(at(&stack, new).answer(set).await, Ok(orset(&["kept"])));
    assert_eq!(
        at(&stack, new).answer("GCounter-gone").await,
        Err("Entity deleted".to_string())
    );
    // And it keeps replicating with the survivor.
    at(&stack, new)
        .process(request(&ids[0], vec![pn(100)]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while at(&stack, 1).answer(&ids[0]).await != Ok(pn_value(111)) {
        assert!(
            Instant::now() < deadline,
            "the survivor did not see the new processor's change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
