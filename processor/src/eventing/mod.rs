//! Eventing (`docs/protocol.md`, "Eventing"): methods fed from an event log or a Kafka topic,
//! and replies published to a topic.
//!
//! * [`plan`] — what the `(cloudstate.eventing)` options ask for, validated.
//! * [`event`] — a journal event or a topic record as a command: the CloudEvent metadata, the
//!   payload (by content type for topics), the deterministic idempotency key.
//! * [`output`] — a reply as a record of the method's `out` topic (a CloudEvent in Kafka's
//!   binary mode): entities add it to their command's writes, actions publish it.
//! * [`consumer`] — a subscription's consumer-group member: events in partition order, each a
//!   command run to its end (forwards and side effects included) before the group moves past
//!   it.

pub(crate) mod consumer;
pub(crate) mod event;
pub(crate) mod output;
pub(crate) mod plan;
