//! Whole-stack test tools shared by the tests in `tests/`: a client driver that records every
//! operation (invoked → ok / failed / unknown) with unique tokens and idempotency keys, and a
//! checker that reads the journal with read_committed and queries every entity (the counters of
//! ARCHITECTURE.md, "Invariants"); the TCK model protos and the relay test service; the CRDT
//! tests' processor client; the shopping-cart load and journal fold of the projection tests;
//! a recording driver of reads and writes and a per-key linearizability checker (R5); signed
//! JWTs and TLS clients for the security tests.

pub mod carts;
pub mod checker;
pub mod clients;
pub mod crdt;
pub mod driver;
pub mod intercept;
pub mod jwt;
pub mod linearizable;
pub mod pipe;
pub mod proto;
pub mod recorder;
pub mod relay;
pub mod tls;
pub mod values;
