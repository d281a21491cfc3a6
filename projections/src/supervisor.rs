//! A projection's generations: the one served, and — after `statehouse admin projections
//! reset` — the one being rebuilt from offset 0 alongside it. Every replica of the projector
//! runs both (each a consumer group of its own, partitions spread over the replicas) and looks
//! at the record every `poll-interval-ms`: once the rebuilt generation has read every journal
//! partition as far as the served one, a conditional write makes it the served one (queries
//! switch with it) and the old generation's consumers stop; ten poll intervals later the
//! replica that switched drops the old generation's rows. Until the switch queries keep
//! reading the old generation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use statehouse_store::projections::Generations;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Ctx, Spec, metrics as m, worker};

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
    loop {
        match ctx.store.projection(service, &spec.name).await {
            Ok(Some(record)) => {
                let generations = record.generations;
                serving.set(&spec.name, generations);
                metrics::gauge!(m::GENERATION, "projection" => spec.name.clone())
                    .set(f64::from(generations.serving));
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
            // Drop the old generation once every replica has switched its queries (they look
            // every poll interval) and stopped its consumers.
            let (store, service, name, old) = (
                ctx.store.clone(),
                service.to_string(),
                spec.name.clone(),
                generations.serving,
            );
            let wait = Duration::from_millis(ctx.options.poll_interval_ms) * 10;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                match store.drop_projection_generation(&service, &name, old).await {
                    Ok(rows) => {
                        info!(projection = %name, generation = old, rows, "old generation dropped")
                    }
                    Err(e) => {
                        warn!(projection = %name, generation = old, error = %e, "dropping the old generation failed; its rows stay")
                    }
                }
            });
        }
        Ok(false) => {}
        Err(e) => {
            warn!(projection = %spec.name, error = %e, "switching generations failed; will retry")
        }
    }
}
