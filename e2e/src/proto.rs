//! Messages and clients of the protos in `e2e/proto/`: the Cloudstate TCK models (served by the
//! Go SDK's TCK user function) and the test services of our own.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// The encoded `FileDescriptorSet` of `e2e/proto/` with its imports, for Rust SDK user
/// functions that serve these services.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/e2e_descriptors.bin"));

/// `cloudstate.tck.model` (event-sourced model) and its sub-packages.
pub mod tck {
    include!(concat!(env!("OUT_DIR"), "/cloudstate.tck.model.rs"));

    pub mod valueentity {
        include!(concat!(
            env!("OUT_DIR"),
            "/cloudstate.tck.model.valueentity.rs"
        ));
    }

    pub mod eventlogeventing {
        include!(concat!(
            env!("OUT_DIR"),
            "/cloudstate.tck.model.eventlogeventing.rs"
        ));
    }

    pub mod crdt {
        include!(concat!(env!("OUT_DIR"), "/cloudstate.tck.model.crdt.rs"));
    }

    pub mod action {
        include!(concat!(env!("OUT_DIR"), "/cloudstate.tck.model.action.rs"));
    }
}

/// `statehouse.e2e`: the relay service.
pub mod relay {
    include!(concat!(env!("OUT_DIR"), "/statehouse.e2e.rs"));
}

/// `statehouse.e2e.pipe`: the pipe service (eventing topics in and out).
pub mod pipe {
    include!(concat!(env!("OUT_DIR"), "/statehouse.e2e.pipe.rs"));
}
