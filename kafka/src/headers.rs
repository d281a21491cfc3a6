//! Kafka record header names Statehouse writes (DESIGN §3).

/// The entity id of the record.
pub const ENTITY: &str = "statehouse-entity";
/// The entity sequence number of an event, as decimal text.
pub const SEQ: &str = "statehouse-seq";
/// The `type_url` of the record's payload.
pub const TYPE: &str = "statehouse-type";
/// W3C trace context of the command that produced the record.
pub const TRACEPARENT: &str = "traceparent";
