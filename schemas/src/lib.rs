//! Statehouse wire schemas: every byte format Statehouse speaks, in one crate.
//!
//! * **The Cloudstate protocol 0.2** ([`cloudstate`]): the gRPC services a user
//!   function serves (discovery, event-sourced, value and CRDT entities,
//!   actions; the legacy 0.1 `StatelessFunction` too) and the annotations users
//!   put in their own protos (`cloudstate.entity_key` = 1080, legacy 50002,
//!   `cloudstate.eventing` = 1081). Messages, clients and servers are generated
//!   from `schemas/proto/` at build time (pure Rust: `protox`, no `protoc`).
//! * **google.api / google.rpc** ([`google`]): HTTP transcoding rules, `HttpBody`,
//!   and the rich error `Status`.
//! * **Statehouse's own APIs** ([`statehouse`]): the internal
//!   gateway → processor call (`statehouse.processor.v1.Processor`), the admin
//!   API, the projection handler API, and the canonical form of CRDT states
//!   (`statehouse.crdt.v1`).
//! * **The shopping cart example** ([`shoppingcart`]) used by samples and tests.
//! * **Avro records** ([`avro`]): the values of every Statehouse Kafka topic,
//!   single-object encoded, with every shipped schema version known by
//!   fingerprint.
//!
//! [`FILE_DESCRIPTOR_SET`] holds the descriptors of every proto file above
//! (custom options included), for gRPC reflection and for the gateway.
//!
//! Byte fields are [`bytes::Bytes`]; well-known types come from [`prost_types`]
//! (`google.protobuf.Empty` maps to `()`). Server traits are generated with
//! tonic's `#[async_trait]`: implement them under `#[tonic::async_trait]`.

pub mod avro;
mod error;
mod not_owner;
pub mod protocol;

pub use error::Error;

/// The encoded `google.protobuf.FileDescriptorSet` of every proto file in
/// `schemas/proto/` and their imports (the well-known types included), with
/// source info (comments) and custom options (entity keys, HTTP rules,
/// eventing) preserved.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// The Cloudstate protocol (package `cloudstate`): shared messages, discovery
/// and the frontend annotations (`entity_key`, `legacy_entity_key`, `eventing`).
// lowerCamel rpc names (`handle`, `handleUnary`) give lowerCamel stream types.
// Generated code: allow what prost/tonic output and proto comments may trip.
#[allow(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    clippy::large_enum_variant,
    clippy::derive_partial_eq_without_eq,
    rustdoc::bare_urls,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links,
    non_camel_case_types
)]
pub mod cloudstate {
    include!(concat!(env!("OUT_DIR"), "/cloudstate.rs"));

    /// Event-sourced entities (`cloudstate.eventsourced`).
    pub mod eventsourced {
        include!(concat!(env!("OUT_DIR"), "/cloudstate.eventsourced.rs"));
    }

    /// Value entities (`cloudstate.valueentity`).
    pub mod valueentity {
        include!(concat!(env!("OUT_DIR"), "/cloudstate.valueentity.rs"));
    }

    /// CRDT entities, protocol 0.2 deltas (`cloudstate.crdt`).
    pub mod crdt {
        include!(concat!(env!("OUT_DIR"), "/cloudstate.crdt.rs"));
    }

    /// Stateless actions (`cloudstate.action`).
    pub mod action {
        include!(concat!(env!("OUT_DIR"), "/cloudstate.action.rs"));
    }

    /// Legacy (0.1) stateless functions (`cloudstate.function`).
    pub mod function {
        include!(concat!(env!("OUT_DIR"), "/cloudstate.function.rs"));
    }
}

/// Google API definitions Statehouse uses.
// Generated code: allow what prost/tonic output and proto comments may trip.
#[allow(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    clippy::large_enum_variant,
    clippy::derive_partial_eq_without_eq,
    rustdoc::bare_urls,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links
)]
pub mod google {
    /// HTTP transcoding rules (`google.api.http`) and `HttpBody`.
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }

    /// The rich gRPC error model (`google.rpc.Status`).
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// gRPC's own services that the gateway serves: server reflection (v1 and
/// v1alpha) and health checking.
// Generated code: allow what prost/tonic output and proto comments may trip.
#[allow(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    clippy::large_enum_variant,
    clippy::derive_partial_eq_without_eq,
    rustdoc::bare_urls,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links
)]
pub mod grpc {
    /// Server reflection.
    pub mod reflection {
        /// `grpc.reflection.v1`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/grpc.reflection.v1.rs"));
        }

        /// `grpc.reflection.v1alpha` (what the Cloudstate TCK and older tools call).
        pub mod v1alpha {
            include!(concat!(env!("OUT_DIR"), "/grpc.reflection.v1alpha.rs"));
        }
    }

    /// Health checking.
    pub mod health {
        /// `grpc.health.v1`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
        }
    }
}

/// Statehouse's own gRPC APIs.
// Generated code: allow what prost/tonic output and proto comments may trip.
#[allow(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    clippy::large_enum_variant,
    clippy::derive_partial_eq_without_eq,
    rustdoc::bare_urls,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links
)]
pub mod statehouse {
    /// The internal gateway → processor API.
    pub mod processor {
        /// `statehouse.processor.v1`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/statehouse.processor.v1.rs"));
        }
    }

    /// The admin API.
    pub mod admin {
        /// `statehouse.admin.v1`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/statehouse.admin.v1.rs"));
        }
    }

    /// CRDT states as Statehouse replicates them (join-semilattice elements, canonically
    /// encoded).
    pub mod crdt {
        /// `statehouse.crdt.v1`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/statehouse.crdt.v1.rs"));
        }
    }

    /// The projection handler API.
    pub mod projection {
        /// `statehouse.projection.v1`.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/statehouse.projection.v1.rs"));
        }
    }
}

/// Example protos, laid out by package (`com.example.*`).
// Generated code: allow what prost/tonic output and proto comments may trip.
#[allow(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    clippy::large_enum_variant,
    clippy::derive_partial_eq_without_eq,
    rustdoc::bare_urls,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links
)]
pub mod com {
    /// `com.example`.
    pub mod example {
        /// The shopping cart example service (`com.example.shoppingcart`).
        pub mod shoppingcart {
            include!(concat!(env!("OUT_DIR"), "/com.example.shoppingcart.rs"));

            /// Its events and snapshot (`com.example.shoppingcart.persistence`).
            pub mod persistence {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/com.example.shoppingcart.persistence.rs"
                ));
            }
        }
    }
}

pub use com::example::shoppingcart;
