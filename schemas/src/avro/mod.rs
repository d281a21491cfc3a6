//! The Avro records Statehouse writes to Kafka, and their encoding.
//!
//! Every record value is Avro [single-object encoded]: the marker `C3 01`,
//! the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
//! Parsing Canonical Form, then the Avro binary body. The writer schemas are
//! the `.avsc` files in `schemas/avro/` (current) and `schemas/avro/history/`
//! (older versions, kept so old records stay readable); [`Registry`] knows
//! them all by fingerprint and decodes any of them into the current Rust
//! type through Avro schema resolution.
//!
//! ```
//! use statehouse_schemas::avro::{AvroRecord, RoutingRecord};
//!
//! let record = RoutingRecord {
//!     service: "shopping-cart".into(),
//!     partition: 3,
//!     owner_processor_id: "processor-0".into(),
//!     owner_endpoint: "http://10.0.0.7:9100".into(),
//!     epoch: 7,
//!     updated_at_ms: 1_700_000_000_000,
//! };
//! let bytes = record.encode()?;
//! assert_eq!(&bytes[..2], &[0xC3, 0x01]);
//! assert_eq!(RoutingRecord::decode(&bytes)?, record);
//! # Ok::<(), statehouse_schemas::Error>(())
//! ```
//!
//! [single-object encoded]: https://avro.apache.org/docs/1.12.0/specification/#single-object-encoding

mod canonical;
mod records;
mod registry;

use apache_avro::Schema;
use serde::{Serialize, de::DeserializeOwned};

pub use records::{
    AppliedOffset, CrdtDeltaRecord, CrdtRecordKind, Entity, EventRecord, Processor, RecentReply,
    Reply, RoutingRecord, ServiceRecord, Snapshot, ValueDeletion, ValueRecord, WriteConsistency,
    Writer,
};
pub use registry::{RecordKind, Registry, SchemaVersion, files};

use crate::Error;

/// The two bytes every single-object encoded record starts with.
pub const MARKER: [u8; 2] = [0xC3, 0x01];

/// Length of the single-object header: marker + 8-byte fingerprint.
pub const HEADER_LEN: usize = 10;

mod sealed {
    pub trait Sealed {}
}

/// A Statehouse Avro record: a Rust type with a shipped schema.
///
/// Encoding and decoding use schemas and resolvers built once per process
/// (see [`Registry::global`]); nothing is parsed per call.
pub trait AvroRecord: Serialize + DeserializeOwned + sealed::Sealed {
    /// Which record this is.
    const KIND: RecordKind;
    /// The full Avro name, e.g. `dev.statehouse.v1.EventRecord`.
    const NAME: &'static str = Self::KIND.name();

    /// The current schema version (the one written).
    fn schema_version() -> &'static SchemaVersion {
        Registry::global().current(Self::KIND)
    }

    /// The current schema.
    fn schema() -> &'static Schema {
        Self::schema_version().schema()
    }

    /// The fingerprint of the current schema.
    fn fingerprint() -> u64 {
        Self::schema_version().fingerprint()
    }

    /// Single-object encodes the record with the current schema.
    fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut buf = Vec::with_capacity(128);
        self.encode_into(&mut buf)?;
        Ok(buf)
    }

    /// Appends the single-object encoding of the record to `buf` (left as it
    /// was on error).
    fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), Error> {
        Registry::global().encode(self, buf)
    }

    /// Decodes a single-object encoded record written with any shipped
    /// version of this record's schema.
    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Registry::global().decode(bytes)
    }
}

macro_rules! avro_record {
    ($($ty:ty => $kind:ident),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl AvroRecord for $ty {
            const KIND: RecordKind = RecordKind::$kind;
        }
    )*};
}

avro_record! {
    EventRecord => Event,
    ValueRecord => Value,
    ValueDeletion => ValueDeletion,
    CrdtDeltaRecord => CrdtDelta,
    ServiceRecord => Service,
    RoutingRecord => Routing,
}

/// Any Statehouse record, for tools that read a topic without knowing what is
/// in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRecord {
    /// A journal event.
    Event(EventRecord),
    /// A value-entity state.
    Value(ValueRecord),
    /// What deleted a value entity.
    ValueDeletion(ValueDeletion),
    /// A CRDT delta.
    CrdtDelta(CrdtDeltaRecord),
    /// A service registry entry.
    Service(ServiceRecord),
    /// A routing entry.
    Routing(RoutingRecord),
}

impl AnyRecord {
    /// Decodes whatever record `bytes` holds, by its writer fingerprint.
    pub fn decode(bytes: &[u8]) -> Result<AnyRecord, Error> {
        let registry = Registry::global();
        let (info, body) = registry.writer_of(bytes)?;
        Ok(match info.kind() {
            RecordKind::Event => AnyRecord::Event(registry.decode_body(info, body)?),
            RecordKind::Value => AnyRecord::Value(registry.decode_body(info, body)?),
            RecordKind::ValueDeletion => {
                AnyRecord::ValueDeletion(registry.decode_body(info, body)?)
            }
            RecordKind::CrdtDelta => AnyRecord::CrdtDelta(registry.decode_body(info, body)?),
            RecordKind::Service => AnyRecord::Service(registry.decode_body(info, body)?),
            RecordKind::Routing => AnyRecord::Routing(registry.decode_body(info, body)?),
        })
    }

    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            AnyRecord::Event(_) => RecordKind::Event,
            AnyRecord::Value(_) => RecordKind::Value,
            AnyRecord::ValueDeletion(_) => RecordKind::ValueDeletion,
            AnyRecord::CrdtDelta(_) => RecordKind::CrdtDelta,
            AnyRecord::Service(_) => RecordKind::Service,
            AnyRecord::Routing(_) => RecordKind::Routing,
        }
    }
}

/// The writer schema of a single-object encoded record, from its header
/// alone (the body is not looked at).
pub fn writer_schema(bytes: &[u8]) -> Result<&'static SchemaVersion, Error> {
    Registry::global().writer_of(bytes).map(|(info, _)| info)
}

/// The fingerprint in a single-object header, known or not.
pub fn fingerprint_of(bytes: &[u8]) -> Result<u64, Error> {
    registry::split_header(bytes).map(|(fingerprint, _)| fingerprint)
}
