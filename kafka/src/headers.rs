//! Kafka record header names Statehouse writes (`schemas/avro/README.md` lists them with the
//! records).

/// The entity id of the record.
pub const ENTITY: &str = "statehouse-entity";
/// The entity sequence number of an event, as decimal text.
pub const SEQ: &str = "statehouse-seq";
/// The `type_url` of the record's payload.
pub const TYPE: &str = "statehouse-type";
/// W3C trace context of the command that produced the record.
pub const TRACEPARENT: &str = "traceparent";
/// On a value-entity tombstone: the `ValueDeletion` record (Avro single-object encoding) of the
/// delete.
pub const DELETION: &str = "statehouse-deletion";

/// `headers` as librdkafka's owned headers (for a record to produce).
pub(crate) fn owned<K: AsRef<str>>(
    headers: &[(K, bytes::Bytes)],
) -> rdkafka::message::OwnedHeaders {
    headers.iter().fold(
        rdkafka::message::OwnedHeaders::new_with_capacity(headers.len()),
        |owned, (key, value)| {
            owned.insert(rdkafka::message::Header {
                key: key.as_ref(),
                value: Some(&value[..]),
            })
        },
    )
}

/// The constant for a header name Statehouse writes, if `name` is one (to write a record read
/// back from Kafka again).
pub fn known(name: &str) -> Option<&'static str> {
    [ENTITY, SEQ, TYPE, TRACEPARENT, DELETION]
        .into_iter()
        .find(|known| *known == name)
}
