use std::net::SocketAddr;

/// Why a [`Service`](crate::Service) cannot be built or served.
///
/// Everything here is found before the first request: a proxy never sees it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No entity was registered; the proxy rejects an empty spec.
    #[error("no entity registered")]
    NoEntities,
    /// No file descriptor set was given.
    #[error("no file descriptor set given; call Service::descriptors")]
    MissingDescriptors,
    /// The bytes are not a `google.protobuf.FileDescriptorSet`.
    #[error("invalid file descriptor set: {0}")]
    InvalidDescriptors(#[source] prost::DecodeError),
    /// A registered service is not declared in the descriptor set.
    #[error("service '{service}' is not in the file descriptor set")]
    ServiceNotFound {
        /// The fully qualified service name.
        service: String,
    },
    /// A file imports one the set does not hold (build it with
    /// `--include_imports`, or from `statehouse_schemas::FILE_DESCRIPTOR_SET`).
    #[error("'{file}' imports '{dependency}', which is not in the file descriptor set")]
    MissingDependency {
        /// The importing file.
        file: String,
        /// The missing import.
        dependency: String,
    },
    /// The same service was registered twice.
    #[error("service '{service}' is registered twice")]
    DuplicateService {
        /// The fully qualified service name.
        service: String,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}
