use statehouse_schemas::statehouse::processor::v1::NotOwner;

/// Errors of the processor. Each maps to one gRPC status, chosen on purpose (see the `From`
/// implementation): `UNAVAILABLE` means "retry, possibly elsewhere".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This processor does not own (or is not yet serving) the command's partition.
    #[error("partition {partition} of {service} is not served here")]
    NotOwner {
        service: String,
        partition: i32,
        /// The owner per the routing table, if another one is known ("" = unknown).
        owner_endpoint: String,
        owner_epoch: i64,
    },
    #[error("no method {0}")]
    UnknownMethod(String),
    #[error("bad request: {0}")]
    InvalidArgument(String),
    #[error("deadline exceeded before the command ran")]
    DeadlineExceeded,
    #[error("{0}")]
    Overloaded(String),
    /// The entity's stream to the user function failed (the reference proxy's fixed texts,
    /// `docs/protocol.md`).
    #[error("{0}")]
    EntityFailure(String),
    /// The events could not be committed; nothing the command did is durable.
    #[error("the command's events were not committed: {0}")]
    NotCommitted(#[from] statehouse_kafka::Error),
    /// An earlier command of the same entity was not committed, and this one ran on its state:
    /// nothing this one did is durable either.
    #[error("an earlier command of the entity was not committed, so this one was not: {0}")]
    EarlierNotCommitted(String),
    #[error("the backup store is unavailable: {0}")]
    Store(#[from] statehouse_store::Error),
    #[error("user function: {0}")]
    UserFunction(String),
    /// An action call to the user function ended with this status: passed on as it is (the
    /// reference proxy does the same).
    #[error("{}", .0.message())]
    UserFunctionCall(tonic::Status),
    #[error("corrupt journal: {0}")]
    Journal(String),
    /// A record of the entity did not decode on recovery (`crate::tail`, "quarantined"): its
    /// state would be wrong, so it refuses commands while every other entity works.
    #[error("{0}")]
    Quarantined(String),
    #[error("shutting down")]
    ShuttingDown,
    #[error("configuration: {0}")]
    Config(String),
    /// A forward or side effect could not be delivered to the processor that runs it.
    #[error("routing a forward or side effect: {0}")]
    Route(#[from] statehouse_runtime::router::Error),
    /// An erasure could not finish (`crate::erase`); running it again is safe.
    #[error("erasure: {0}")]
    Erasure(String),
    /// A start-up step failed for good (e.g. the topics exist with another partition count).
    #[error("{what} failed: {reason}")]
    Startup { what: String, reason: String },
}

impl Error {
    /// This processor cannot take a command that any processor of the service may run (CRDTs
    /// catching up or stopping): the router tries another one.
    pub(crate) fn elsewhere(service: &str) -> Self {
        Error::NotOwner {
            service: service.to_string(),
            partition: -1,
            owner_endpoint: String::new(),
            owner_epoch: 0,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::{Code, Status};
        let message = err.to_string();
        match err {
            Error::NotOwner {
                service,
                partition,
                owner_endpoint,
                owner_epoch,
            } => NotOwner {
                service,
                partition,
                owner_endpoint,
                owner_epoch,
                owner_processor_id: String::new(),
            }
            .into_status(Code::Unavailable, message),
            Error::UnknownMethod(_) => Status::unimplemented(message),
            Error::InvalidArgument(_) => Status::invalid_argument(message),
            Error::DeadlineExceeded => Status::deadline_exceeded(message),
            Error::Overloaded(_) => Status::resource_exhausted(message),
            Error::EntityFailure(_) => Status::unknown(message),
            // A record above a limit: no retry can succeed, and the message names the limit.
            Error::NotCommitted(
                statehouse_kafka::Error::RecordTooLarge { .. }
                | statehouse_kafka::Error::TooLarge { .. },
            ) => Status::invalid_argument(message),
            // Not committed (aborted, fenced, outcome unknown): retry with the same idempotency
            // key; never OK.
            Error::NotCommitted(_)
            | Error::EarlierNotCommitted(_)
            | Error::Store(_)
            | Error::ShuttingDown => Status::unavailable(message),
            // Half done (e.g. Cassandra down): retry later, it is idempotent.
            Error::Erasure(_) => Status::unavailable(message),
            Error::UserFunction(_) => Status::unavailable(message),
            Error::UserFunctionCall(status) => Status::new(status.code(), status.message()),
            Error::Journal(_) => Status::internal(message),
            // No retry helps until an operator resolved the record; the message names it.
            Error::Quarantined(_) => Status::failed_precondition(message),
            Error::Config(_) | Error::Startup { .. } => Status::failed_precondition(message),
            Error::Route(e) => route_status(e, message),
        }
    }
}

/// The status of a routing failure: what the target processor answered is passed on; anything
/// that kept the command from reaching one is "retry later" (or the deadline).
fn route_status(error: statehouse_runtime::router::Error, message: String) -> tonic::Status {
    use statehouse_runtime::router::Error as Route;
    use tonic::Status;
    match error {
        Route::Processor(status) => Status::new(status.code(), status.message()),
        Route::DeadlineExceeded { .. } => Status::deadline_exceeded(message),
        Route::UnknownService { .. } | Route::BadServiceName { .. } => {
            Status::failed_precondition(message)
        }
        Route::NoOwner { .. }
        | Route::NoProcessor { .. }
        | Route::Unreachable { .. }
        | Route::BadEndpoint { .. }
        | Route::Kafka(_) => Status::unavailable(message),
    }
}
