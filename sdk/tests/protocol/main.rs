//! Black-box tests of the SDK over the wire: a tonic server on loopback,
//! driven with the generated Cloudstate clients the way the proxy drives it.

mod discovery;
mod eventsourced;
mod model;
mod support;
