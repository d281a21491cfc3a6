//! Projections into Cassandra (`statehouse.projection.v1`, target `CASSANDRA`): the read model
//! of an entity type, one row per entity, that `statehouse projector` keeps up to date from the
//! journal. The projection only says how an event changes a row ([`Projection::apply`]); the
//! projector reads the journal, hands each entity's current row and next events over, stores
//! the rows and makes it exactly once in effect (`ARCHITECTURE.md`, "Projections").
//!
//! Register projections on the [`Service`](crate::Service) that serves the entities: the same
//! port then answers the projector too.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost_types::Any;
use statehouse_schemas::statehouse::projection::v1 as pb;
use statehouse_schemas::statehouse::projection::v1::projection_handler_server::ProjectionHandler;
use tonic::{Request, Response, Status};

use crate::{Failure, any};

/// A projection: how the events of one entity type fold into its read-model row.
pub trait Projection: Send + Sync + 'static {
    /// The row: a protobuf message.
    type Row: prost::Message + prost::Name + Default;

    /// Its name: lowercase letters, digits and `-`, unique per service.
    fn name(&self) -> &str;

    /// The persistence id of the entities whose events feed it.
    fn persistence_id(&self) -> &str;

    /// The row after `event` (`None`: there is no row, e.g. after a delete). Must depend only on
    /// its arguments: the projector may call it again with the same ones after a crash.
    fn apply(&self, row: Option<Self::Row>, event: &Any) -> Result<Option<Self::Row>, Failure>;
}

/// A registered projection, its row type erased.
pub(crate) trait Folder: Send + Sync {
    fn spec(&self) -> pb::ProjectionSpec;
    fn fold(&self, entity: pb::EntityEvents) -> Result<pb::RowChange, Failure>;
}

impl<P: Projection> Folder for P {
    fn spec(&self) -> pb::ProjectionSpec {
        pb::ProjectionSpec {
            name: self.name().to_string(),
            persistence_id: self.persistence_id().to_string(),
            target: pb::Target::Cassandra as i32,
        }
    }

    fn fold(&self, entity: pb::EntityEvents) -> Result<pb::RowChange, Failure> {
        let mut row = match &entity.row {
            Some(row) => Some(any::unpack::<P::Row>(row)?),
            None => None,
        };
        for event in entity.events {
            let event = Any {
                type_url: event.type_url,
                value: event.payload.to_vec(),
            };
            row = self.apply(row, &event)?;
        }
        Ok(match row {
            Some(row) => pb::RowChange {
                entity_id: entity.entity_id,
                row: Some(any::pack(&row)),
                delete: false,
            },
            None => pb::RowChange {
                entity_id: entity.entity_id,
                row: None,
                delete: true,
            },
        })
    }
}

/// The `ProjectionHandler` service of a user function's projections.
pub(crate) struct Handler {
    pub(crate) projections: BTreeMap<String, Arc<dyn Folder>>,
}

#[tonic::async_trait]
impl ProjectionHandler for Handler {
    async fn describe(
        &self,
        _: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        Ok(Response::new(pb::DescribeResponse {
            projections: self.projections.values().map(|p| p.spec()).collect(),
        }))
    }

    async fn project(
        &self,
        request: Request<pb::ProjectRequest>,
    ) -> Result<Response<pb::ProjectResponse>, Status> {
        let request = request.into_inner();
        let projection = self.projections.get(&request.projection).ok_or_else(|| {
            Status::not_found(format!("no projection named {}", request.projection))
        })?;
        let rows = request
            .entities
            .into_iter()
            .map(|entity| {
                let id = entity.entity_id.clone();
                projection.fold(entity).map_err(|failure| {
                    Status::invalid_argument(format!(
                        "projection {} failed on entity {id}: {}",
                        request.projection,
                        failure.description()
                    ))
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(pb::ProjectResponse { rows }))
    }

    async fn handle_batch(&self, _: Request<pb::EventBatch>) -> Result<Response<pb::Ack>, Status> {
        Err(Status::unimplemented(
            "this handler's projections are CASSANDRA projections (Project); it has no EXTERNAL ones",
        ))
    }
}
