//! What every partition and entity of a processor shares: its service, topics, stores, user
//! function and limits — set once at start, read everywhere (a leaf module).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use statehouse_store::Store;
use tokio_util::sync::CancellationToken;

use crate::records::Topics;
use crate::user_function::UserFunction;

pub(crate) struct Env {
    pub(crate) kafka: statehouse_kafka::Options,
    pub(crate) service: statehouse_core::ServiceName,
    pub(crate) service_topics: statehouse_core::Topics,
    /// The topics partitions write, as the writer names them.
    pub(crate) topics: Topics,
    pub(crate) processor_id: String,
    pub(crate) store: Store,
    pub(crate) uf: UserFunction,
    /// Idle time before passivation when the entity type names none.
    pub(crate) passivation: Duration,
    pub(crate) max_active: usize,
    pub(crate) backup_interval: Duration,
    /// Active entities of the whole processor.
    pub(crate) active: Arc<AtomicUsize>,
    pub(crate) shutdown: CancellationToken,
}
