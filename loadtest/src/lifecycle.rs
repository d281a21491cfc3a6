//! Entity lifecycle measurements, for `cargo xtask bench memory`: activating many entities
//! (memory per active entity, and recovery throughput after a restart, when the same entities
//! come back) and the takeover time after a processor is killed.
//!
//! These are not throughput sweeps: what matters is how long a set of commands takes to be
//! answered at all (recovery, takeover), so each command is retried until it succeeds, and the
//! time is taken from the outside event (the restart, the kill).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::driver::Target;
use crate::scenario::{self, Op};

/// One command per entity, retried until answered.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Activation {
    pub entities: u64,
    /// Entities answered (each once).
    pub ok: u64,
    /// Entities still failing after every attempt.
    pub failed: u64,
    /// Attempts beyond the first.
    pub retries: u64,
    pub seconds: f64,
}

impl Activation {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

/// Send `op` once to each entity `from..to` of run `run`, `concurrency` at a time, each
/// retried up to `attempts` times (100 ms apart) until it succeeds.
pub async fn activate(
    target: &Target,
    run: &str,
    (from, to): (u64, u64),
    op: Op,
    concurrency: usize,
    attempts: u32,
) -> Activation {
    let retries = AtomicU64::new(0);
    let started = Instant::now();
    let results: Vec<bool> = futures::stream::iter(from..to)
        .map(|k| {
            let mut client = target.client(k);
            let (entity, retries) = (scenario::entity_id(run, k), &retries);
            async move {
                for attempt in 0..attempts.max(1) {
                    if attempt > 0 {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if scenario::call(&mut client, op, entity.clone())
                        .await
                        .is_ok()
                    {
                        return true;
                    }
                }
                false
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let ok = results.iter().filter(|r| **r).count() as u64;
    Activation {
        entities: to.saturating_sub(from),
        ok,
        failed: results.len() as u64 - ok,
        retries: retries.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// What a kill cost the clients.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Takeover {
    pub entities: u64,
    /// Entities whose first command after the kill took longer than `interrupted_ms`.
    pub interrupted: u64,
    pub interrupted_ms: f64,
    /// From the kill to the last entity's first successful command: the takeover time.
    pub max_ms: f64,
    /// Entities never answered within the timeout.
    pub unanswered: u64,
}

/// Check that entities `0..entities` of run `run` answer, call `kill`, then send each of them
/// a command every `interval` (each attempt bounded by one second) until it succeeds. With
/// entities spread over every partition, the slowest is on a partition the killed processor
/// owned, and its time is the takeover time.
pub async fn takeover(
    target: &Target,
    run: &str,
    entities: u64,
    kill: impl FnOnce() -> anyhow::Result<()>,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<Takeover> {
    let before = activate(target, run, (0, entities), Op::AddOther, 64, 50).await;
    anyhow::ensure!(
        before.failed == 0,
        "{} of {entities} entities did not answer before the kill",
        before.failed
    );
    kill()?;
    let killed = Instant::now();
    let times: Vec<Option<Duration>> = futures::stream::iter(0..entities)
        .map(|k| {
            let mut client = target.client(k);
            let entity = scenario::entity_id(run, k);
            async move {
                while killed.elapsed() < timeout {
                    let attempt = tokio::time::timeout(
                        Duration::from_secs(1),
                        scenario::call(&mut client, Op::AddOther, entity.clone()),
                    )
                    .await;
                    if matches!(attempt, Ok(Ok(()))) {
                        return Some(killed.elapsed());
                    }
                    tokio::time::sleep(interval).await;
                }
                None
            }
        })
        .buffer_unordered(entities.max(1) as usize)
        .collect()
        .await;
    Ok(summarize(&times, entities, 100.0))
}

/// The takeover figures of each entity's time to its first success (`None`: never).
pub fn summarize(times: &[Option<Duration>], entities: u64, interrupted_ms: f64) -> Takeover {
    let ms: Vec<f64> = times
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    Takeover {
        entities,
        interrupted: ms.iter().filter(|m| **m > interrupted_ms).count() as u64,
        interrupted_ms,
        max_ms: ms.iter().copied().fold(0.0, f64::max),
        unanswered: times.iter().filter(|t| t.is_none()).count() as u64,
    }
}
