//! `statehouse admin services | partitions | entity | erase`: thin printing over
//! `statehouse_runtime::inspect` (which the gateway's console uses too). `--json` prints the
//! inspector's types as they are serialised.

use anyhow::Context;
use serde::Serialize;
use statehouse_core::ServiceName;
use statehouse_runtime::Config;
use statehouse_runtime::config::TelemetryOptions;
use statehouse_runtime::inspect::{EntityReport, Inspector, State};

/// What to inspect or erase.
pub(crate) enum Request<'a> {
    Services,
    Partitions {
        service: &'a str,
    },
    Entity {
        service: &'a str,
        key: &'a str,
    },
    Erase {
        service: &'a str,
        key: &'a str,
        reason: &'a str,
        dry_run: bool,
        requested_by: Option<&'a str>,
    },
}

pub(crate) async fn run(config: &Config, request: Request<'_>, json: bool) -> anyhow::Result<()> {
    let inspector = Inspector::new(config)
        .await
        .context("connecting to Kafka and Cassandra")?;
    match request {
        Request::Services => {
            let services = inspector.services().await?;
            if json {
                return print_json(&services);
            }
            if services.is_empty() {
                println!("no service is registered");
            }
            for s in services {
                let partitions = s.partitions.map_or_else(
                    || "no journal topic".to_string(),
                    |n| format!("{n} partitions"),
                );
                println!(
                    "{}  ({partitions}; {} processor(s); {}; protocol {})",
                    s.name,
                    s.processors.len(),
                    s.sdk,
                    s.protocol
                );
                for e in s.entities {
                    let pid = if e.persistence_id.is_empty() {
                        String::new()
                    } else {
                        format!("  persistence id {}", e.persistence_id)
                    };
                    println!("  {:<14} {}{pid}", e.kind, e.grpc_service);
                }
            }
        }
        Request::Partitions { service } => {
            let partitions = inspector.partitions(&service_name(service)?).await?;
            if json {
                return print_json(&partitions);
            }
            println!(
                "{:>9}  {:<24} {:<28} {:>14}  {:>11} {:>10}  {:>10} {:>10}  {:>10}",
                "PARTITION",
                "OWNER",
                "ENDPOINT",
                "EPOCH",
                "JOURNAL-END",
                "CHECKPOINT",
                "VALUES-END",
                "CHECKPOINT",
                "BACKUP-LAG"
            );
            for p in partitions {
                let (id, endpoint, epoch) = match &p.owner {
                    Some(o) => (
                        o.processor_id.as_str(),
                        o.endpoint.as_str(),
                        o.epoch.to_string(),
                    ),
                    None => ("(none)", "", String::new()),
                };
                println!(
                    "{:>9}  {id:<24} {endpoint:<28} {epoch:>14}  {:>11} {:>10}  {:>10} {:>10}  {:>10}",
                    p.partition,
                    p.journal_end,
                    p.journal_checkpoint,
                    p.values_end,
                    p.values_checkpoint,
                    p.backup_lag
                );
            }
        }
        Request::Entity { service, key } => {
            let report = inspector.entity(&service_name(service)?, key).await?;
            if json {
                return print_json(&report);
            }
            print_entity(&report);
        }
        Request::Erase {
            service,
            key,
            reason,
            dry_run,
            requested_by,
        } => {
            let service = service_name(service)?;
            if reason.trim().is_empty() {
                anyhow::bail!(
                    "an erasure needs a non-empty --reason (it is kept in the audit record)"
                );
            }
            if dry_run {
                let plan = inspector.erase_plan(&service, key).await?;
                if json {
                    return print_json(&plan);
                }
                println!(
                    "dry run: nothing was changed. Erasing {}|{} of {} (partition {}, owner {}) would:",
                    plan.persistence_id,
                    plan.entity_id,
                    plan.service,
                    plan.partition,
                    plan.owner
                        .as_ref()
                        .map_or("(none)".to_string(), |o| format!(
                            "{} at {}",
                            o.processor_id, o.endpoint
                        ))
                );
                println!(
                    "  write {} journal tombstone(s): {}",
                    plan.journal_keys.len(),
                    plan.journal_keys.join(", ")
                );
                println!(
                    "  write a values-topic tombstone for {} (a live value record: {})",
                    plan.values_key, plan.value_record
                );
                println!(
                    "  remove Cassandra rows: {} journal, {} snapshot(s), value row: {}",
                    plan.journal_rows, plan.snapshot_rows, plan.value_row
                );
                println!("  evict the active instance, and record the erasure in the audit topic");
                return Ok(());
            }
            let who = requested_by.map_or_else(requester, str::to_string);
            let report = inspector.erase(&service, key, reason, &who).await?;
            if json {
                return print_json(&report);
            }
            println!(
                "erased {}|{} of {} (partition {}, by {} at {}):",
                report.persistence_id,
                report.entity_id,
                report.service,
                report.partition,
                report.owner.processor_id,
                report.owner.endpoint
            );
            println!(
                "  {} journal tombstone(s) (seq 1..={}), values tombstone: {}",
                report.journal_tombstones, report.last_seq, report.value_tombstone
            );
            println!(
                "  Cassandra rows removed: {} journal, {} snapshot(s), value row: {}",
                report.journal_rows_removed, report.snapshot_rows_removed, report.value_row_removed
            );
            println!("  active instance evicted: {}", report.evicted);
            println!(
                "  audit record: {} partition {} offset {}",
                report.audit_topic, report.audit_partition, report.audit_offset
            );
        }
    }
    Ok(())
}

fn service_name(name: &str) -> anyhow::Result<ServiceName> {
    ServiceName::new(name.to_string()).with_context(|| format!("bad service name {name:?}"))
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_entity(report: &EntityReport) {
    println!(
        "{} {}|{} of {} (partition {})",
        report.kind, report.persistence_id, report.entity_id, report.service, report.partition
    );
    println!("journal: {} event(s)", report.events.len());
    for e in &report.events {
        println!(
            "  #{:<5} offset {:<8} {}  {}  {}",
            e.seq, e.offset, e.time_ms, e.type_url, e.event
        );
    }
    println!("snapshots: {}", report.snapshots.len());
    for s in &report.snapshots {
        println!(
            "  at #{:<5} {}  {}  {}",
            s.seq, s.time_ms, s.type_url, s.snapshot
        );
    }
    match &report.state {
        State::Value {
            seq,
            value,
            deleted,
            ..
        } => match (seq, value) {
            (Some(seq), Some(value)) => println!("state (version {seq}): {value}"),
            (Some(seq), None) if *deleted => println!("state (version {seq}): deleted"),
            _ => println!("state: none stored"),
        },
        State::EventSourced {
            snapshot_seq,
            events_after,
            note,
            ..
        } => {
            println!(
                "state: from the snapshot at #{} plus {} event(s) after it",
                snapshot_seq.map_or("- (none)".to_string(), |s| s.to_string()),
                events_after.len()
            );
            println!("  ({note})");
        }
        State::Crdt { note } => println!("state: ({note})"),
    }
}

/// `user@host` of whoever runs the command.
fn requester() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}

/// The telemetry of admin commands: they print their results (JSON with `--json`) on stdout,
/// where the logs go too, so unless a log filter was chosen only warnings are logged.
pub(crate) fn telemetry(config: &Config) -> TelemetryOptions {
    let mut telemetry = config.telemetry.clone();
    if telemetry.log_filter == TelemetryOptions::default().log_filter {
        telemetry.log_filter = "warn".into();
    }
    telemetry
}
