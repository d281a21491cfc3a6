//! Hanging transactions: how long the last stable offset (LSO) of each owned partition of the
//! journal and values topics has not moved while the high watermark is above it
//! ([`metrics::LSO_STUCK`]). A transaction left open there holds every `read_committed` reader
//! back — the next owner's takeover, projections, eventing subscriptions, journal consumers —
//! until the broker aborts it (`transaction.timeout.ms`) or a new `init_transactions` of its
//! transactional id does; the fault tests met it after unclean broker restarts
//! (`docs/runbooks.md`, "StatehouseLastStableOffsetStuck").
//!
//! Every [`EVERY`] the two ends of each owned partition are asked of the brokers through two
//! long-lived consumers that never fetch (`statehouse_kafka::ends`): one `ListOffsets` request
//! per end — cheaper than librdkafka's statistics, which carry these offsets only for partitions
//! a consumer fetches (the ownership consumer never does). Busy partitions have a transaction
//! open most of the time, but their LSO moves with every commit: only an LSO that stays put
//! below the high watermark counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use statehouse_kafka::ends::Ends;
use tracing::{debug, warn};

use crate::metrics;
use crate::node::Node;
use crate::records::Topic;

/// How often the ends are asked.
const EVERY: Duration = Duration::from_secs(10);
/// Bound of one watermark query.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where a partition's LSO stood and since when, while below the high watermark.
struct Seen {
    lso: i64,
    since: Instant,
    gauge: ::metrics::Gauge,
}

/// Watch the owned partitions until the processor shuts down.
pub(crate) async fn watch(node: Arc<Node>) {
    let ends = match Ends::new(&node.env.kafka) {
        Ok(ends) => Arc::new(ends),
        Err(e) => {
            warn!(error = %e, "cannot watch the last stable offsets; statehouse_partition_lso_stuck_seconds stays unset");
            return;
        }
    };
    let mut seen: HashMap<(Topic, u32), Seen> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut owned: Vec<u32> = node
            .partitions
            .read()
            .expect("partitions lock")
            .keys()
            .copied()
            .collect();
        owned.sort_unstable();
        let asks: Vec<(Topic, String, u32)> = node
            .env
            .topics
            .all()
            .into_iter()
            .flat_map(|(topic, name)| owned.iter().map(move |&id| (topic, name.to_string(), id)))
            .collect();
        let ends = Arc::clone(&ends);
        let stop = node.shutdown.clone();
        let Ok(answers) = tokio::task::spawn_blocking(move || {
            // The first failure ends the round (a broker away would cost a timeout per
            // partition); so does shutdown, so that the process never waits for a round.
            let mut answers = Vec::with_capacity(asks.len());
            for (topic, name, id) in asks {
                if stop.is_cancelled() {
                    break;
                }
                let answer = ends.get(&name, id, TIMEOUT);
                let failed = answer.is_err();
                answers.push((topic, id, answer));
                if failed {
                    break;
                }
            }
            answers
        })
        .await
        else {
            continue;
        };
        let now = Instant::now();
        for (topic, id, answer) in answers {
            let (lso, high) = match answer {
                Ok(ends) => ends,
                Err(e) => {
                    // Unknown now: the gauge keeps its last value until an answer comes.
                    debug!(partition = id, ?topic, error = %e, "reading the partition's ends failed");
                    continue;
                }
            };
            let entry = seen.entry((topic, id)).or_insert_with(|| Seen {
                lso,
                since: now,
                gauge: ::metrics::gauge!(
                    metrics::LSO_STUCK,
                    "topic" => label(topic),
                    "partition" => id.to_string(),
                ),
            });
            if lso >= high || lso != entry.lso {
                entry.lso = lso;
                entry.since = now;
            }
            entry
                .gauge
                .set(now.duration_since(entry.since).as_secs_f64());
        }
        // Released partitions: their next owner reports them.
        seen.retain(|(_, id), entry| {
            let keep = owned.binary_search(id).is_ok();
            if !keep {
                entry.gauge.set(0.0);
            }
            keep
        });
    }
}

fn label(topic: Topic) -> &'static str {
    match topic {
        Topic::Journal => "journal",
        Topic::Values => "values",
    }
}
