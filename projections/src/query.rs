//! The projector's query API (`statehouse.projection.v1.Projections`): the row of an entity in
//! a projection's served generation — after the projection has read past given journal
//! positions, for reading one's own writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use statehouse_schemas::statehouse::projection::v1 as pb;
use statehouse_schemas::statehouse::projection::v1::projections_server::Projections;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::supervisor::Serving;
use crate::{Ctx, Spec};

/// Longest wait for positions.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Wait when `after` is given without `wait_ms`.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Query {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) specs: BTreeMap<String, Arc<Spec>>,
    pub(crate) serving: Arc<Serving>,
}

fn store_error(e: statehouse_store::Error) -> Status {
    Status::unavailable(format!("Cassandra: {e}"))
}

#[tonic::async_trait]
impl Projections for Query {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let request = request.into_inner();
        let spec = self.specs.get(&request.projection).ok_or_else(|| {
            Status::not_found(format!(
                "no projection named {:?} (this projector serves: {})",
                request.projection,
                self.specs.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if spec.external {
            return Err(Status::failed_precondition(format!(
                "projection {} is external: its rows are in the handler's own database",
                spec.name
            )));
        }
        if request.entity_id.is_empty() {
            return Err(Status::invalid_argument("entity_id is empty"));
        }
        let service = self.ctx.service.as_str();
        if !request.after.is_empty() {
            let wait = match request.wait_ms {
                0 => DEFAULT_WAIT,
                ms => Duration::from_millis(u64::from(ms)).min(MAX_WAIT),
            };
            let deadline = Instant::now() + wait;
            // Progress is in Cassandra: look again soon, then less often.
            let mut pause = Duration::from_millis(20);
            loop {
                let generation = self.generation(&spec.name)?;
                let progress = self
                    .ctx
                    .store
                    .projection_progress(service, &spec.name, generation)
                    .await
                    .map_err(store_error)?;
                let behind: Vec<String> = request
                    .after
                    .iter()
                    .filter(|p| {
                        progress
                            .get(&p.partition)
                            .is_none_or(|next| *next <= p.offset)
                    })
                    .map(|p| format!("{}@{}", p.partition, p.offset))
                    .collect();
                if behind.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Status::deadline_exceeded(format!(
                        "projection {} has not read past {} within {wait:?}",
                        spec.name,
                        behind.join(", ")
                    )));
                }
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
        let generation = self.generation(&spec.name)?;
        let rows = self
            .ctx
            .store
            .read_projection_rows(
                service,
                &spec.name,
                generation,
                &[request.entity_id.as_str()],
            )
            .await
            .map_err(store_error)?;
        let row = rows.get(&request.entity_id);
        Ok(Response::new(pb::GetResponse {
            found: row.is_some_and(|r| r.row.is_some()),
            row: row
                .and_then(|r| r.row.as_ref())
                .map(|(type_url, bytes)| prost_types::Any {
                    type_url: type_url.clone(),
                    value: bytes.to_vec(),
                }),
            seq: row.map_or(0, |r| r.seq),
            generation,
        }))
    }
}

impl Query {
    fn generation(&self, name: &str) -> Result<i32, Status> {
        self.serving
            .get(name)
            .map(|g| g.serving)
            .ok_or_else(|| Status::unavailable(format!("projection {name} is starting")))
    }
}
