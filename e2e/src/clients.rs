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
