//! What the console reads of Kafka and Cassandra, through `statehouse_runtime::inspect` (the
//! same reads as `statehouse admin`): partition ends and backup checkpoints, one entity's
//! history, and the erasure of an entity (the owner's `Processor/Erase`). Projection lag is a
//! small read of its own: each projection's serving generation's progress in Cassandra
//! (`statehouse_store::projections`) against the journal's ends.
//!
//! The connections are made on first use, not at the gateway's start: the gateway routes
//! commands without Cassandra, and a console page must not be what keeps it from starting.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::Serialize;
use statehouse_core::ServiceName;
use statehouse_runtime::config::Config;
use statehouse_runtime::inspect::{self, EntityReport, EraseReport, Inspector};
use statehouse_store::Store;
use tokio::sync::OnceCell;

use super::html::{self, Html};
use super::pages::Refusal;

/// One partition's ends, as the partitions page shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Ends {
    /// The journal partition's end for `read_committed` readers.
    pub(crate) journal_end: Option<i64>,
    /// Everything of the journal before this offset is in Cassandra.
    pub(crate) backup_checkpoint: Option<i64>,
    /// Offsets not backed up yet, journal and values topics.
    pub(crate) backup_lag: Option<i64>,
}

/// The lag of one service.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServiceLag {
    pub(crate) service: String,
    /// Offsets not backed up yet, over all partitions.
    pub(crate) backup_lag: Option<i64>,
    /// The largest backup lag of one partition.
    pub(crate) backup_lag_max: Option<i64>,
    /// The sum of the journal partitions' ends.
    pub(crate) journal_end_total: Option<i64>,
    pub(crate) projections: Vec<ProjectionLag>,
    /// Why figures are missing.
    pub(crate) error: Option<String>,
}

/// The lag of one projection's serving generation.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ProjectionLag {
    pub(crate) name: String,
    pub(crate) generation: i32,
    /// Journal offsets the generation has not read yet, over all partitions.
    pub(crate) lag: Option<i64>,
    /// The largest lag of one partition.
    pub(crate) lag_max: Option<i64>,
}

/// The console's reader of Kafka and Cassandra.
pub(crate) struct Inspection {
    config: Config,
    readers: OnceCell<Readers>,
}

struct Readers {
    inspector: Inspector,
    store: Store,
}

impl Inspection {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            config: config.clone(),
            readers: OnceCell::new(),
        }
    }

    /// The readers, connected on first use (a failure is retried by the next request).
    async fn readers(&self) -> Result<&Readers, Refusal> {
        self.readers
            .get_or_try_init(|| async {
                let inspector = Inspector::new(&self.config).await?;
                let store = Store::connect(&self.config.cassandra).await?;
                Ok::<_, inspect::Error>(Readers { inspector, store })
            })
            .await
            .map_err(|e| refusal(&e))
    }

    /// Journal ends and backup checkpoints of `service`'s partitions.
    pub(crate) async fn partitions(&self, service: &str) -> Result<BTreeMap<u32, Ends>, String> {
        let name = service_name(service).map_err(|r| r.message)?;
        let readers = self.readers().await.map_err(|r| r.message)?;
        let partitions = readers
            .inspector
            .partitions(&name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(partitions
            .into_iter()
            .map(|p| {
                (
                    p.partition,
                    Ends {
                        journal_end: Some(p.journal_end),
                        backup_checkpoint: Some(p.journal_checkpoint),
                        backup_lag: Some(p.backup_lag),
                    },
                )
            })
            .collect())
    }

    /// Backup and projection lag of each of `services`.
    pub(crate) async fn lag(&self, services: &[String]) -> Vec<ServiceLag> {
        let mut out = Vec::with_capacity(services.len());
        for service in services {
            let mut lag = ServiceLag {
                service: service.clone(),
                ..ServiceLag::default()
            };
            if let Err(e) = self.fill_lag(&mut lag).await {
                lag.error = Some(e);
            }
            out.push(lag);
        }
        out
    }

    async fn fill_lag(&self, lag: &mut ServiceLag) -> Result<(), String> {
        let name = service_name(&lag.service).map_err(|r| r.message)?;
        let readers = self.readers().await.map_err(|r| r.message)?;
        let partitions = readers
            .inspector
            .partitions(&name)
            .await
            .map_err(|e| e.to_string())?;
        lag.backup_lag = Some(partitions.iter().map(|p| p.backup_lag).sum());
        lag.backup_lag_max = partitions.iter().map(|p| p.backup_lag).max();
        lag.journal_end_total = Some(partitions.iter().map(|p| p.journal_end).sum());
        let ends: BTreeMap<i32, i64> = partitions
            .iter()
            .map(|p| (p.partition as i32, p.journal_end))
            .collect();
        let projections = readers
            .store
            .projections(name.as_str())
            .await
            .map_err(|e| e.to_string())?;
        for projection in projections {
            let generation = projection.generations.serving;
            let progress = readers
                .store
                .projection_progress(name.as_str(), &projection.name, generation)
                .await
                .map_err(|e| e.to_string())?;
            let (total, max) = projection_lag(&ends, &progress);
            lag.projections.push(ProjectionLag {
                name: projection.name,
                generation,
                lag: Some(total),
                lag_max: Some(max),
            });
        }
        Ok(())
    }

    /// One entity's events, snapshots and state.
    pub(crate) async fn entity(&self, service: &str, key: &str) -> Result<EntityReport, Refusal> {
        let name = service_name(service)?;
        let readers = self.readers().await?;
        readers
            .inspector
            .entity(&name, key)
            .await
            .map_err(|e| refusal(&e))
    }

    /// Erase one entity through the owner of its partition.
    pub(crate) async fn erase(
        &self,
        service: &str,
        key: &str,
        reason: &str,
    ) -> Result<EraseReport, Refusal> {
        let name = service_name(service)?;
        let readers = self.readers().await?;
        readers
            .inspector
            .erase(&name, key, reason, "web console (admin token)")
            .await
            .map_err(|e| refusal(&e))
    }
}

/// (total, largest) lag of a projection generation: per journal partition, its end minus the
/// generation's progress there (a partition it never read lags by its whole end).
pub(crate) fn projection_lag(
    ends: &BTreeMap<i32, i64>,
    progress: &BTreeMap<i32, i64>,
) -> (i64, i64) {
    ends.iter()
        .map(|(p, end)| (end - progress.get(p).copied().unwrap_or(0)).max(0))
        .fold((0, 0), |(total, max), lag| (total + lag, max.max(lag)))
}

fn service_name(service: &str) -> Result<ServiceName, Refusal> {
    ServiceName::new(service).map_err(|e| Refusal {
        status: StatusCode::BAD_REQUEST,
        message: format!("service {service:?}: {e}"),
    })
}

/// The answer for an inspection error: bad input is the client's (4xx), the rest is the
/// infrastructure's (5xx).
fn refusal(error: &inspect::Error) -> Refusal {
    let status = match error {
        inspect::Error::UnknownService { .. } => StatusCode::NOT_FOUND,
        inspect::Error::BadKey { .. } | inspect::Error::NoReason => StatusCode::BAD_REQUEST,
        inspect::Error::Erase(_) => StatusCode::BAD_GATEWAY,
        inspect::Error::NoOwner { .. } | inspect::Error::Kafka(_) | inspect::Error::Store(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Refusal {
        status,
        message: error.to_string(),
    }
}

/// An entity report as HTML: a summary, the events (decoded to JSON), the snapshots, the state.
pub(crate) fn render_entity(body: &mut Html, report: &EntityReport) {
    let mut summary = Html::new();
    summary
        .el("td", report.kind)
        .el("td", &report.persistence_id)
        .el("td", &report.entity_id)
        .raw("<td class=\"num\">")
        .text(report.partition)
        .raw("</td>")
        .raw("<td class=\"num\">")
        .text(report.events.len())
        .raw("</td>");
    body.table(
        "entity",
        &["Kind", "Persistence id", "Entity id", "Partition", "Events"],
        &[summary],
    );

    body.raw("<h2>Events</h2>");
    let events: Vec<Html> = report
        .events
        .iter()
        .map(|e| {
            let mut row = Html::new();
            row.raw("<td class=\"num\">")
                .text(e.seq)
                .raw("</td><td class=\"num\">")
                .text(e.offset)
                .raw("</td>")
                .el("td", html::utc(e.time_ms))
                .raw("<td><code>")
                .text(short_type_url(&e.type_url))
                .raw("</code></td><td>");
            pre(&mut row, &e.event);
            row.raw("</td>")
                .el("td", e.idempotency_key.as_deref().unwrap_or(""))
                .el("td", json_word(&e.source));
            row
        })
        .collect();
    body.table(
        "events",
        &[
            "Seq",
            "Offset",
            "Time (UTC)",
            "Type",
            "Event",
            "Idempotency key",
            "From",
        ],
        &events,
    );

    body.raw("<h2>Snapshots</h2>");
    let snapshots: Vec<Html> = report
        .snapshots
        .iter()
        .map(|s| {
            let mut row = Html::new();
            row.raw("<td class=\"num\">")
                .text(s.seq)
                .raw("</td>")
                .el("td", html::utc(s.time_ms))
                .raw("<td><code>")
                .text(short_type_url(&s.type_url))
                .raw("</code></td><td>");
            pre(&mut row, &s.snapshot);
            row.raw("</td>").el("td", json_word(&s.source));
            row
        })
        .collect();
    body.table(
        "snapshots",
        &["Seq", "Time (UTC)", "Type", "Snapshot", "From"],
        &snapshots,
    );

    body.raw("<h2>State</h2><div id=\"state\">");
    pre(
        body,
        &serde_json::to_value(&report.state).unwrap_or_default(),
    );
    body.raw("</div>");
}

/// `type.googleapis.com/pkg.Type` → `pkg.Type`.
fn short_type_url(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, t)| t)
}

/// A unit enum as its serde name (`cassandra`, `kafka`).
fn json_word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn pre(body: &mut Html, value: &serde_json::Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    body.raw("<pre>").text(text).raw("</pre>");
}

#[cfg(test)]
mod tests {
    use statehouse_runtime::inspect::{EventInfo, SnapshotInfo, Source, State};

    use super::*;

    #[test]
    fn an_entity_renders_escaped() {
        let report = EntityReport {
            service: "shop".into(),
            persistence_id: "cart".into(),
            entity_id: "<script>alert(1)</script>".into(),
            kind: "event-sourced",
            partition: 3,
            events: vec![EventInfo {
                seq: 1,
                offset: 17,
                time_ms: 0,
                type_url: "type.googleapis.com/shop.ItemAdded".into(),
                event: serde_json::json!({"item": {"name": "<b>Apple</b>"}}),
                idempotency_key: Some("k'1".into()),
                source: Source::Kafka,
            }],
            snapshots: vec![SnapshotInfo {
                seq: 1,
                time_ms: 0,
                type_url: "type.googleapis.com/shop.Cart".into(),
                snapshot: serde_json::json!({}),
                source: Source::Cassandra,
            }],
            state: State::Crdt { note: "n/a" },
        };
        let mut body = Html::new();
        render_entity(&mut body, &report);
        let html = body.into_string();
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("<table id=\"events\">"), "{html}");
        assert!(html.contains("<code>shop.ItemAdded</code>"), "{html}");
        assert!(
            html.contains("&quot;name&quot;: &quot;&lt;b&gt;Apple&lt;/b&gt;&quot;"),
            "{html}"
        );
        assert!(html.contains("<td>k&#39;1</td><td>kafka</td>"), "{html}");
        assert!(html.contains("<td>cassandra</td>"), "{html}");
        assert!(html.contains("<div id=\"state\"><pre>"), "{html}");
    }

    #[test]
    fn projection_lag_counts_unread_journal_offsets() {
        let ends = BTreeMap::from([(0, 10), (1, 5), (2, 0)]);
        assert_eq!(projection_lag(&ends, &BTreeMap::new()), (15, 10));
        let progress = BTreeMap::from([(0, 10), (1, 2)]);
        assert_eq!(projection_lag(&ends, &progress), (3, 3));
        // Progress past the end (a read marker) is no negative lag.
        assert_eq!(
            projection_lag(&BTreeMap::from([(0, 4)]), &BTreeMap::from([(0, 5)])),
            (0, 0)
        );
    }
}
