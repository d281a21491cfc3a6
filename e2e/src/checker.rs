//! After the faults: the journal as any read_committed consumer sees it, and every cart as the
//! gateway serves it, compared with what the driver was told.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use prost::Message;
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::shoppingcart::GetShoppingCart;
use statehouse_schemas::shoppingcart::persistence::ItemAdded;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;

use crate::driver::History;

/// The counters of the reliability plan. All must be 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub acknowledged: usize,
    pub definite_failures: usize,
    pub unknown: usize,
    pub journaled: usize,
    /// Acknowledged but not in the journal.
    pub lost_ack: usize,
    /// Journaled more than once.
    pub duplicate: usize,
    /// Answered as failed but visible in the journal.
    pub aborted_visible: usize,
    /// An entity's events are not 1, 2, 3, …
    pub seq_gap: usize,
    /// Within a partition, a record of an older writer epoch after a newer one.
    pub writer_interleave: usize,
    /// An entity's served state differs from the fold of its journal.
    pub fold_mismatch: usize,
}

impl Report {
    /// The counters that must be 0, as a tuple for one assertion.
    pub fn anomalies(&self) -> (usize, usize, usize, usize, usize, usize) {
        (
            self.lost_ack,
            self.duplicate,
            self.aborted_visible,
            self.seq_gap,
            self.writer_interleave,
            self.fold_mismatch,
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acknowledged={} failed={} unknown={} journaled={} | lost-ack={} duplicate={} aborted-visible={} seq-gap={} writer-interleave={} fold-mismatch={}",
            self.acknowledged,
            self.definite_failures,
            self.unknown,
            self.journaled,
            self.lost_ack,
            self.duplicate,
            self.aborted_visible,
            self.seq_gap,
            self.writer_interleave,
            self.fold_mismatch
        )
    }
}

/// Read the journal of `service` under `prefix` and query every cart through `gateway`.
pub async fn check(
    kafka_bootstrap: &str,
    prefix: &str,
    service: &str,
    partitions: u32,
    gateway: &str,
    history: &History,
) -> Report {
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap.to_string(),
        ..statehouse_kafka::Options::default()
    };
    let topic = format!("{prefix}{service}.journal");
    let mut report = Report {
        acknowledged: history.acked.len(),
        definite_failures: history.failed.len(),
        unknown: history.unknown.len(),
        ..Report::default()
    };
    let mut by_entity: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for p in 0..partitions {
        let mut newest = i64::MIN;
        for m in read_to_end(
            &kafka,
            &topic,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(120),
        )
        .await
        .expect("reading the journal")
        {
            let e =
                EventRecord::decode(m.value.as_ref().expect("a value")).expect("an EventRecord");
            if e.writer.epoch < newest {
                report.writer_interleave += 1;
            }
            newest = newest.max(e.writer.epoch);
            let token = ItemAdded::decode(e.payload.clone())
                .expect("an ItemAdded")
                .item
                .expect("an item")
                .product_id;
            by_entity
                .entry(e.entity_id.clone())
                .or_default()
                .push(token);
            seqs.entry(e.entity_id).or_default().push(e.seq);
        }
    }
    report.seq_gap = seqs
        .values()
        .filter(|s| s.iter().enumerate().any(|(i, seq)| *seq != i as i64 + 1))
        .count();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for token in by_entity.values().flatten() {
        *seen.entry(token.as_str()).or_default() += 1;
    }
    report.journaled = seen.len();
    (report.lost_ack, report.duplicate, report.aborted_visible) = tally(history, &seen);
    let mut client = ShoppingCartClient::connect(format!("http://{gateway}"))
        .await
        .expect("connecting to the gateway");
    for (cart, expected) in &by_entity {
        let mut served = None;
        for _ in 0..20 {
            let mut request = tonic::Request::new(GetShoppingCart {
                user_id: cart.clone(),
            });
            request.set_timeout(Duration::from_secs(10));
            if let Ok(r) = client.get_cart(request).await {
                served = Some(
                    r.into_inner()
                        .items
                        .into_iter()
                        .map(|i| i.product_id)
                        .collect::<Vec<_>>(),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if served.as_ref() != Some(expected) {
            report.fold_mismatch += 1;
        }
    }
    report
}

/// How many tokens of the log (`seen`: token → times written) tell of an anomaly: acknowledged
/// but missing (lost-ack), written more than once (duplicate), failed but written
/// (aborted-visible).
pub fn tally(history: &History, seen: &HashMap<&str, usize>) -> (usize, usize, usize) {
    let lost_ack = history
        .acked
        .keys()
        .filter(|t| !seen.contains_key(t.as_str()))
        .count();
    let duplicate = seen.values().filter(|&&n| n > 1).count();
    let aborted_visible = history
        .failed
        .iter()
        .filter(|t| seen.contains_key(t.as_str()))
        .count();
    (lost_ack, duplicate, aborted_visible)
}

/// [`check`] for the shopping-cart service of a [`Stack`](statehouse_test_support::stack::Stack).
pub async fn check_stack(
    stack: &statehouse_test_support::stack::Stack,
    partitions: u32,
    history: &History,
) -> Report {
    check(
        &stack.kafka_bootstrap(),
        &stack.prefix,
        &stack.options.service,
        partitions,
        &stack.gateway_addr,
        history,
    )
    .await
}
