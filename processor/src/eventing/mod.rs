//! Eventing (`docs/protocol.md`, "Eventing"): methods fed from an event log or a Kafka topic,
//! and replies published to a topic.
//!
//! * [`plan`] — what the `(cloudstate.eventing)` options ask for, validated.
//! * [`event`] — an event as a command: the CloudEvent metadata, the payload, the
//!   deterministic idempotency key.
//! * [`consumer`] — a subscription's consumer-group member: events in partition order, each a
//!   command run to its end (forwards and side effects included) before the group moves past
//!   it.

pub(crate) mod consumer;
pub(crate) mod event;
pub(crate) mod output;
pub(crate) mod plan;
