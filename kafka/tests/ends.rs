//! `ends::Ends` against the real Kafka broker: an open transaction keeps the last stable
//! offset below the high watermark; once it commits (its markers written) the two meet. This is
//! what the processor's hanging-transaction gauge (`statehouse_partition_lso_stuck_seconds`)
//! reads.

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use statehouse_core::{ServiceName, Topics};
use statehouse_kafka::Options;
use statehouse_kafka::admin::Admin;
use statehouse_kafka::ends::Ends;
use statehouse_test_support::{kafka_bootstrap, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_holds_the_last_stable_offset_below_the_high_watermark() {
    let options = Options {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: format!("{}.", unique("ends")),
        ..Options::default()
    };
    let service = ServiceName::new("svc").unwrap();
    Admin::new(&options)
        .unwrap()
        .ensure_service(&service, 1)
        .await
        .unwrap();
    let topics = Topics::new(options.topic_prefix.clone(), service);
    let journal = topics.journal();
    let timeout = Duration::from_secs(15);

    tokio::task::spawn_blocking(move || {
        let ends = Ends::new(&options).unwrap();
        assert_eq!(ends.get(&journal, 0, timeout).unwrap(), (0, 0), "empty");

        let producer: FutureProducer = options
            .transactional_producer_config(&topics.transactional_id(0))
            .create()
            .unwrap();
        producer.init_transactions(timeout).unwrap();
        producer.begin_transaction().unwrap();
        for i in 0..3 {
            producer
                .send_result(
                    FutureRecord::to(&journal)
                        .partition(0)
                        .key(&format!("k{i}"))
                        .payload("x"),
                )
                .unwrap();
        }
        producer.flush(timeout).unwrap();
        let (lso, high) = ends.get(&journal, 0, timeout).unwrap();
        assert_eq!(high, 3, "the open transaction's records are in the log");
        assert_eq!(
            lso, 0,
            "the open transaction holds the last stable offset at its start"
        );

        producer.commit_transaction(timeout).unwrap();
        // The commit marker is written after the commit returns: wait for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (lso, high) = ends.get(&journal, 0, timeout).unwrap();
            if lso == high {
                assert_eq!(high, 4, "three records and the commit marker");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the ends never met: {lso} < {high}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}
