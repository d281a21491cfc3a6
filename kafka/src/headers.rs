//! Kafka record header names Statehouse writes (DESIGN §3).

/// The entity id of the record.
pub const ENTITY: &str = "statehouse-entity";
/// The entity sequence number of an event, as decimal text.
pub const SEQ: &str = "statehouse-seq";
/// The `type_url` of the record's payload.
pub const TYPE: &str = "statehouse-type";
/// W3C trace context of the command that produced the record.
pub const TRACEPARENT: &str = "traceparent";

/// The constant for a header name Statehouse writes, if `name` is one (to write a record read
/// back from Kafka again).
pub fn known(name: &str) -> Option<&'static str> {
    [ENTITY, SEQ, TYPE, TRACEPARENT]
        .into_iter()
        .find(|known| *known == name)
}
