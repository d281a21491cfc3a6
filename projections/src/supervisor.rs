//! A projection's generations: the one served, and — after `statehouse admin projections
//! reset` — the one being rebuilt from offset 0 alongside it. Every replica of the projector
//! runs both (each a consumer group of its own, partitions spread over the replicas) and looks
//! at the record every `poll-interval-ms`: once the rebuilt generation has read every journal
//! partition as far as the served one, a conditional write makes it the served one (queries
//! switch with it) and the old generation's consumers stop; ten poll intervals later any
//! replica drops the old generation's rows (retried until done). Until the switch queries keep
//! reading the old generation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use statehouse_store::projections::Generations;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Ctx, Spec, metrics as m, worker};

/// Polls after a switch before the old generation is dropped.
const DROP_AFTER_POLLS: u32 = 10;

/// The generations of every projection, as last read (what queries read from).
#[derive(Default)]
pub(crate) struct Serving {
    generations: RwLock<BTreeMap<String, Generations>>,
}

impl Serving {
    pub(crate) fn get(&self, name: &str) -> Option<Generations> {
        self.generations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    fn set(&self, name: &str, generations: Generations) {
        self.generations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), generations);
    }
}

/// Keep the right generations of `spec` running until `stop`.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    spec: Arc<Spec>,
    serving: Arc<Serving>,
    stop: CancellationToken,
) {
    let service = ctx.service.as_str();
    let poll = Duration::from_millis(ctx.options.poll_interval_ms);
    let mut workers: BTreeMap<i32, (CancellationToken, JoinHandle<()>)> = BTreeMap::new();
    // The generation served and for how many polls this replica has seen it serve; older
    // generations known gone.
    let mut served_for: (i32, u32) = (0, 0);
    let mut dropped: BTreeSet<i32> = BTreeSet::new();
    loop {
        match ctx.store.projection(service, &spec.name).await {
            Ok(Some(record)) => {
                let generations = record.generations;
                if served_for.0 == generations.serving {
                    served_for.1 = served_for.1.saturating_add(1);
                } else {
                    served_for = (generations.serving, 0);
                }
                serving.set(&spec.name, generations);
                metrics::gauge!(m::GENERATION, "projection" => spec.name.clone())
                    .set(f64::from(generations.serving));
                m::touch(&spec.name, generations.serving);
                let mut wanted = BTreeSet::from([generations.serving]);
                if generations.building > 0 {
                    wanted.insert(generations.building);
                }
                let gone: Vec<i32> = workers
                    .keys()
                    .copied()
                    .filter(|g| !wanted.contains(g))
                    .collect();
                for generation in gone {
                    if let Some((token, task)) = workers.remove(&generation) {
                        token.cancel();
                        let _ = task.await;
                    }
                }
                for generation in wanted {
                    workers.entry(generation).or_insert_with(|| {
                        let token = stop.child_token();
                        let task = tokio::spawn(worker::run(
                            Arc::clone(&ctx),
                            Arc::clone(&spec),
                            generation,
                            token.clone(),
                        ));
                        (token, task)
                    });
                }
                if generations.building > 0 {
                    switch_when_caught_up(&ctx, &spec, generations).await;
                }
                // Ten polls after the switch every replica serves the new generation and has
                // stopped the old one's consumers: the old rows can go. Any replica does it (it
                // is idempotent), so a replica that dies meanwhile leaves nothing behind.
                if served_for.1 >= DROP_AFTER_POLLS {
                    for old in 1..generations.serving {
                        if !dropped.contains(&old) && drop_generation(&ctx, &spec, old).await {
                            dropped.insert(old);
                        }
                    }
                }
            }
            Ok(None) => {
                warn!(projection = %spec.name, "the projection's record is missing; recording it again");
                if let Err(e) = ctx
                    .store
                    .ensure_projection(service, &spec.name, &spec.persistence_id)
                    .await
                {
                    warn!(projection = %spec.name, error = %e, "recording the projection failed");
                }
            }
            Err(e) => {
                warn!(projection = %spec.name, error = %e, "reading the projection's generations failed; retrying")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    for (_, (token, task)) in workers {
        token.cancel();
        let _ = task.await;
    }
}

/// Drop generation `old` if it still has rows: `true` once it is gone. Its progress goes last,
/// so no progress means nothing left.
async fn drop_generation(ctx: &Ctx, spec: &Spec, old: i32) -> bool {
    let service = ctx.service.as_str();
    match ctx
        .store
        .projection_progress(service, &spec.name, old)
        .await
    {
        Ok(progress) if progress.is_empty() => return true,
        Ok(_) => {}
        Err(e) => {
            warn!(projection = %spec.name, generation = old, error = %e, "reading an old generation failed; will retry");
            return false;
        }
    }
    match ctx
        .store
        .drop_projection_generation(service, &spec.name, old)
        .await
    {
        Ok(rows) => {
            info!(projection = %spec.name, generation = old, rows, "old generation dropped");
            true
        }
        Err(e) => {
            warn!(projection = %spec.name, generation = old, error = %e, "dropping an old generation failed; will retry");
            false
        }
    }
}

/// Serve the rebuilt generation once it has read every partition as far as the served one.
async fn switch_when_caught_up(ctx: &Ctx, spec: &Spec, generations: Generations) {
    let service = ctx.service.as_str();
    let (Ok(served), Ok(built)) = (
        ctx.store
            .projection_progress(service, &spec.name, generations.serving)
            .await,
        ctx.store
            .projection_progress(service, &spec.name, generations.building)
            .await,
    ) else {
        return;
    };
    // Every journal partition has records (at least each owner's settle marker), so each one
    // is read by the new generation and gets progress.
    let caught_up = (0..ctx.journal_partitions as i32).all(|p| {
        built
            .get(&p)
            .is_some_and(|b| *b >= served.get(&p).copied().unwrap_or(0))
    });
    if !caught_up {
        return;
    }
    match ctx
        .store
        .switch_generation(service, &spec.name, generations.building)
        .await
    {
        Ok(true) => {
            info!(projection = %spec.name, from = generations.serving, to = generations.building, "rebuilt generation caught up: serving it");
        }
        Ok(false) => {}
        Err(e) => {
            warn!(projection = %spec.name, error = %e, "switching generations failed; will retry")
        }
    }
}
