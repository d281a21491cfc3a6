//! The gateway's errors, and the one place they become gRPC statuses and HTTP answers.

use http::StatusCode;
use tonic::{Code, Status};

use statehouse_runtime::router;

/// Everything that can go wrong in the gateway: starting it, or serving one call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },

    /// `[gateway.tls]` or `[internal-tls]` cannot be set up (a file, a key, a name).
    #[error("TLS: {0}")]
    Tls(#[from] statehouse_runtime::tls::Error),

    /// The web console cannot start (its admin token file).
    #[error(transparent)]
    Console(#[from] crate::console::Error),

    /// Kafka (registry topics, partition counts) failed.
    #[error(transparent)]
    Kafka(#[from] statehouse_kafka::Error),

    /// The service registry consumer failed.
    #[error(transparent)]
    Feed(#[from] router::feed::Error),

    /// A gRPC path no discovered service serves.
    #[error("unknown method {path}")]
    UnknownMethod {
        /// The request path.
        path: String,
    },

    /// A health check for a service the gateway does not route.
    #[error("service {service:?} is unknown")]
    UnknownService {
        /// The full gRPC service name.
        service: String,
    },

    /// No HTTP rule matches the request.
    #[error("no HTTP rule matches {method} {path}")]
    NoRoute {
        /// The HTTP method.
        method: String,
        /// The request path.
        path: String,
    },

    /// A compressed gRPC message.
    #[error("compressed gRPC messages are not supported (send grpc-encoding: identity)")]
    Compressed,

    /// A request message above `gateway.max-request-bytes`.
    #[error("the request message is larger than the limit of {limit} bytes")]
    RequestTooLarge {
        /// The configured limit.
        limit: usize,
    },

    /// A call over one of the gateway's limits (`crate::limits`): refused before it reaches a
    /// processor.
    #[error("the request's {what} ({size}) exceed the limit {key} ({limit})")]
    OverLimit {
        /// What was measured.
        what: &'static str,
        /// The configuration key of the limit.
        key: &'static str,
        /// The request's value.
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// A reply message above `gateway.max-response-bytes` (the command ran; its reply is not
    /// sent).
    #[error(
        "the reply message of {size} bytes exceeds the limit gateway.max-response-bytes ({limit} bytes)"
    )]
    ResponseTooLarge {
        /// The reply's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// Adaptive admission refused the call: the gateway runs as many calls as it measured it
    /// can take (`statehouse_runtime::admission`).
    #[error("{0}")]
    Overloaded(statehouse_runtime::admission::Refused),

    /// The request body is not one well-formed gRPC message.
    #[error("malformed gRPC request body: {reason}")]
    BadFrame {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The client went away (or sent a broken body) while the request was read.
    #[error("reading the request body failed: {0}")]
    Body(String),

    /// The request cannot be turned into the method's input message (HTTP/JSON, or a
    /// gRPC-Web text body that is not base64).
    #[error("Malformed request: {0}")]
    MalformedRequest(String),

    /// An HTTP request with a body whose Content-Type is not JSON.
    #[error("Content-Type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),

    /// The request message does not yield an entity id.
    #[error(transparent)]
    EntityKey(#[from] statehouse_runtime::method_index::Error),

    /// Routing the command to its processor failed.
    #[error(transparent)]
    Route(#[from] router::Error),

    /// The user function failed the command (`Failure.description`, with the processor's code;
    /// a user failure is UNKNOWN).
    #[error("{description}")]
    Failure {
        /// The gRPC status code.
        code: Code,
        /// The failure description, for the client.
        description: String,
    },

    /// No valid bearer token on a method that needs a caller (`docs/security.md`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(crate::auth::Refusal),

    /// The access rules refuse this caller this method (`docs/security.md`, "Access rules").
    #[error("permission denied for {method}")]
    PermissionDenied {
        /// `pkg.Service/Method`.
        method: String,
    },

    /// `[gateway.auth]` cannot start (its keys cannot be loaded).
    #[error("gateway.auth: {0}")]
    AuthSetup(String),

    /// A reply that does not decode as the method's output type (HTTP/JSON only: gRPC
    /// replies are passed through untouched).
    #[error("the reply is not a valid {message}: {reason}")]
    BadReply {
        /// The output type.
        message: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The HTTP status of this error for HTTP/JSON clients (`docs/protocol.md`, "Errors": a
    /// user failure is 500 with its description, a malformed request 400).
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::UnknownMethod { .. } | Error::NoRoute { .. } | Error::UnknownService { .. } => {
                StatusCode::NOT_FOUND
            }
            Error::Compressed => StatusCode::NOT_IMPLEMENTED,
            Error::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::OverLimit { .. } => StatusCode::BAD_REQUEST,
            Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            // The command ran; the client must not read "retry later" (429) into it.
            Error::ResponseTooLarge { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Error::BadFrame { .. }
            | Error::MalformedRequest(_)
            | Error::UnsupportedMediaType(_)
            | Error::EntityKey(_) => StatusCode::BAD_REQUEST,
            Error::Body(_) => StatusCode::BAD_REQUEST,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            Error::Failure { code, .. } => http_status_of(*code),
            Error::Bind { .. }
            | Error::Tls(_)
            | Error::Console(_)
            | Error::AuthSetup(_)
            | Error::BadReply { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Kafka(_) | Error::Feed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Route(e) => http_status_of(route_code(e)),
        }
    }

    /// When the client should try again, for a refusal under load (`retry-after`; gRPC
    /// clients read `grpc-retry-pushback-ms`).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Overloaded(refused) => Some(refused.retry_after),
            Error::Route(router::Error::Processor(status))
                if status.code() == Code::ResourceExhausted =>
            {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// Whether the call ran on a processor, for adaptive admission: a call refused or lost
    /// before it ran says nothing of how long calls take.
    pub(crate) fn ran(&self) -> bool {
        match self {
            Error::Failure { .. } | Error::BadReply { .. } | Error::ResponseTooLarge { .. } => true,
            Error::Route(router::Error::Processor(status)) => !matches!(
                status.code(),
                Code::ResourceExhausted | Code::Unavailable | Code::Cancelled
            ),
            Error::Route(router::Error::DeadlineExceeded { .. }) => true,
            _ => false,
        }
    }

    /// The text HTTP/JSON clients get: a processor's own status message as it is (as for a
    /// user failure, e.g. `Entity deleted`), otherwise the error's description.
    pub fn http_message(&self) -> String {
        match self {
            Error::Route(router::Error::Processor(status)) => status.message().to_string(),
            other => other.to_string(),
        }
    }
}

/// The gRPC code of a routing error.
fn route_code(error: &router::Error) -> Code {
    match error {
        // Retry elsewhere / later: nobody can run the command right now.
        router::Error::NoOwner { .. }
        | router::Error::NoProcessor { .. }
        | router::Error::Unreachable { .. }
        | router::Error::UnknownService { .. }
        | router::Error::BadEndpoint { .. }
        | router::Error::Kafka(_) => Code::Unavailable,
        router::Error::BadServiceName { .. } => Code::FailedPrecondition,
        // The owner kept moving until the deadline.
        router::Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        // The processor chose the code.
        router::Error::Processor(status) => status.code(),
    }
}

/// The HTTP status for a gRPC code (the mapping grpc-gateway and Envoy use).
pub fn http_status_of(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The gRPC code of an error (see `From<Error> for Status`).
pub(crate) fn code_of(error: &Error) -> Code {
    match error {
        // Not a call; never sent, but mapped on purpose all the same.
        Error::Bind { .. } | Error::Tls(_) | Error::Console(_) | Error::AuthSetup(_) => {
            Code::Internal
        }
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied { .. } => Code::PermissionDenied,
        Error::Kafka(_) | Error::Feed(_) => Code::Unavailable,
        // gRPC's own answer for a method the server does not have.
        Error::UnknownMethod { .. } | Error::NoRoute { .. } => Code::Unimplemented,
        // What the health protocol asks for an unknown service.
        Error::UnknownService { .. } => Code::NotFound,
        Error::Compressed => Code::Unimplemented,
        // Shed: the client must send less.
        Error::RequestTooLarge { .. } => Code::ResourceExhausted,
        // What gRPC answers for a message over a size limit.
        Error::ResponseTooLarge { .. } => Code::ResourceExhausted,
        Error::OverLimit { .. } => Code::InvalidArgument,
        // Shed: come back later (`retry-after`).
        Error::Overloaded(_) => Code::ResourceExhausted,
        Error::BadFrame { .. }
        | Error::MalformedRequest(_)
        | Error::UnsupportedMediaType(_)
        | Error::EntityKey(_) => Code::InvalidArgument,
        Error::Body(_) => Code::Cancelled,
        Error::Failure { code, .. } => *code,
        Error::BadReply { .. } => Code::Internal,
        Error::Route(e) => route_code(e),
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        if let Error::Route(router::Error::Processor(status)) = &error {
            // Pass the processor's status on as it is (details included).
            return Status::with_details(
                status.code(),
                status.message(),
                status.details().to_vec().into(),
            );
        }
        Status::new(code_of(&error), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_http_statuses_are_chosen_per_error() {
        let failure = Error::Failure {
            code: Code::Unknown,
            description: "boom".into(),
        };
        assert_eq!(failure.http_status(), StatusCode::INTERNAL_SERVER_ERROR);
        let status = Status::from(failure);
        assert_eq!((status.code(), status.message()), (Code::Unknown, "boom"));

        let too_large = Error::RequestTooLarge { limit: 10 };
        assert_eq!(too_large.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(Status::from(too_large).code(), Code::ResourceExhausted);

        let deadline = Error::Route(router::Error::DeadlineExceeded {
            service: "cart".into(),
            partition: 3,
            last: "not owner".into(),
        });
        assert_eq!(deadline.http_status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(Status::from(deadline).code(), Code::DeadlineExceeded);

        let no_owner = Error::Route(router::Error::NoOwner {
            service: "cart".into(),
            partition: 3,
        });
        assert_eq!(no_owner.http_status(), StatusCode::SERVICE_UNAVAILABLE);

        let processor = Error::Route(router::Error::Processor(Status::resource_exhausted("full")));
        assert_eq!(processor.http_status(), StatusCode::TOO_MANY_REQUESTS);
        let status = Status::from(processor);
        assert_eq!(
            (status.code(), status.message()),
            (Code::ResourceExhausted, "full")
        );

        assert_eq!(
            Error::MalformedRequest("bad JSON".into()).to_string(),
            "Malformed request: bad JSON"
        );
        assert_eq!(http_status_of(Code::NotFound), StatusCode::NOT_FOUND);

        let unauthenticated = Error::Unauthenticated(crate::auth::Refusal::Expired);
        assert_eq!(unauthenticated.http_status(), StatusCode::UNAUTHORIZED);
        let status = Status::from(unauthenticated);
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::Unauthenticated,
                "unauthenticated: the token has expired"
            )
        );
        let denied = Error::PermissionDenied {
            method: "cart.Cart/Remove".into(),
        };
        assert_eq!(denied.http_status(), StatusCode::FORBIDDEN);
        assert_eq!(Status::from(denied).code(), Code::PermissionDenied);
        assert_eq!(
            http_status_of(Code::InvalidArgument),
            StatusCode::BAD_REQUEST
        );
    }
}
