//! Clients of a [`Stack`]'s own Kafka topics and Cassandra keyspace, for tests that look past
//! the gateway (the journal, the backup, projection tables).

use statehouse_store::Store;
use statehouse_test_support::stack::Stack;
use statehouse_test_support::{cassandra_contact_point, kafka_bootstrap};

/// Kafka options reaching the stack's topics (its prefix) on the single broker.
pub fn kafka(stack: &Stack) -> statehouse_kafka::Options {
    statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: stack.prefix.clone(),
        ..statehouse_kafka::Options::default()
    }
}

/// A Cassandra session on the stack's keyspace.
pub async fn store(stack: &Stack) -> Store {
    Store::connect(&statehouse_store::Options {
        contact_points: vec![cassandra_contact_point()],
        keyspace: stack.keyspace.clone(),
        ..statehouse_store::Options::default()
    })
    .await
    .expect("connecting to the stack's keyspace")
}

/// The sequence numbers of `entity`'s events (`<service>|<id>`) in `topic`'s `partition`,
/// committed ones only, from offset 0.
pub async fn journal_seqs(
    kafka: &statehouse_kafka::Options,
    topic: &str,
    partition: u32,
    entity: &str,
) -> Vec<u64> {
    statehouse_kafka::reader::read_to_end(
        kafka,
        topic,
        partition,
        0,
        statehouse_kafka::reader::Isolation::ReadCommitted,
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("reading {topic} partition {partition}: {e}"))
    .into_iter()
    .filter_map(|m| {
        let key = String::from_utf8(m.key?.to_vec()).ok()?;
        let (e, seq) = statehouse_core::ids::parse_journal_key(&key).ok()?;
        (e == entity).then_some(seq)
    })
    .collect()
}
