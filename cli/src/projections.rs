//! `statehouse admin projections`: what the projector keeps in Cassandra, and the journal's
//! ends for the lag.

use anyhow::{Context, bail};
use statehouse_core::ServiceName;
use statehouse_runtime::config::Config;
use statehouse_store::Store;

use crate::ProjectionsCommand;

pub(crate) async fn run(
    config: &Config,
    service: Option<&str>,
    command: &ProjectionsCommand,
) -> anyhow::Result<()> {
    let service = service
        .map(str::to_string)
        .or_else(|| config.projector.service.clone())
        .or_else(|| config.processor.service.clone())
        .context("name the service: --service, or projector.service in the configuration")?;
    let service = ServiceName::new(service)?;
    let store = Store::connect(&config.cassandra)
        .await
        .context("connecting to Cassandra")?;
    let s = service.as_str();
    match command {
        ProjectionsCommand::List => {
            let projections = store.projections(s).await?;
            if projections.is_empty() {
                println!("service {s}: no projections (no projector has started for it)");
            }
            for p in projections {
                let building = match p.generations.building {
                    0 => String::new(),
                    g => format!(", rebuilding generation {g}"),
                };
                println!(
                    "{}: persistence id {}, serving generation {}{building}",
                    p.name, p.persistence_id, p.generations.serving
                );
            }
        }
        ProjectionsCommand::Status { name } => {
            let Some(p) = store.projection(s, name).await? else {
                bail!(
                    "service {s} has no projection {name:?} (see `statehouse admin projections list`)"
                );
            };
            println!("{name}: persistence id {}", p.persistence_id);
            let mut generations = vec![("serving", p.generations.serving)];
            if p.generations.building > 0 {
                generations.push(("rebuilding", p.generations.building));
            }
            for (what, generation) in generations {
                let partitions =
                    statehouse_projections::lag(&config.kafka, &store, &service, name, generation)
                        .await?;
                let lag: i64 = partitions.iter().map(|p| p.lag()).sum();
                println!("generation {generation} ({what}): lag {lag} records");
                for p in &partitions {
                    println!(
                        "  partition {}: read to {} of {} (lag {})",
                        p.partition,
                        p.read,
                        p.end,
                        p.lag()
                    );
                }
                for parked in store.parked_projection_events(s, name, generation).await? {
                    println!(
                        "  parked: partition {} offset {} entity {:?} seq {}{}: {}",
                        parked.partition,
                        parked.offset,
                        parked.entity_id,
                        parked.seq,
                        if parked.skip { " (skipped)" } else { "" },
                        parked.error
                    );
                }
            }
        }
        ProjectionsCommand::Reset { name } => {
            let Some(p) = store.projection(s, name).await? else {
                bail!("service {s} has no projection {name:?}");
            };
            if p.generations.building > 0 {
                bail!(
                    "{name} is already rebuilding generation {}; wait until it serves it",
                    p.generations.building
                );
            }
            match store.start_rebuild(s, name, p.generations.serving).await? {
                Some(generation) => println!(
                    "{name}: rebuilding from offset 0 as generation {generation}; generation {} serves until it has caught up",
                    p.generations.serving
                ),
                None => bail!("{name} changed meanwhile; look again with `status`"),
            }
        }
        ProjectionsCommand::Skip {
            name,
            partition,
            offset,
            generation,
        } => {
            let generation = match generation {
                Some(g) => *g,
                None => {
                    store
                        .projection(s, name)
                        .await?
                        .with_context(|| format!("service {s} has no projection {name:?}"))?
                        .generations
                        .serving
                }
            };
            if store
                .skip_parked_projection_event(s, name, generation, *partition, *offset)
                .await?
            {
                println!(
                    "{name} generation {generation}: the event at partition {partition} offset {offset} is skipped; the projector passes it within its poll interval"
                );
            } else {
                bail!(
                    "{name} generation {generation} has no parked event at partition {partition} offset {offset}"
                );
            }
        }
    }
    Ok(())
}
