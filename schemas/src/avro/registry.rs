//! Every Avro schema version Statehouse ships, by fingerprint, with the
//! encoders and decoders built once per process.

use std::{collections::HashMap, fmt, sync::LazyLock};

use apache_avro::{Schema, reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter};
use serde::de::DeserializeOwned;

use super::{AvroRecord, HEADER_LEN, MARKER, canonical};
use crate::Error;

/// The kinds of Statehouse records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// [`EventRecord`](super::EventRecord): the journal.
    Event,
    /// [`ValueRecord`](super::ValueRecord): value-entity state.
    Value,
    /// [`ValueDeletion`](super::ValueDeletion): what deleted a value entity (a tombstone's
    /// header).
    ValueDeletion,
    /// [`CrdtDeltaRecord`](super::CrdtDeltaRecord): CRDT replication.
    CrdtDelta,
    /// [`ServiceRecord`](super::ServiceRecord): the service registry.
    Service,
    /// [`RoutingRecord`](super::RoutingRecord): partition ownership.
    Routing,
}

impl RecordKind {
    /// Every kind, in declaration order.
    pub const ALL: [RecordKind; 6] = [
        RecordKind::Event,
        RecordKind::Value,
        RecordKind::ValueDeletion,
        RecordKind::CrdtDelta,
        RecordKind::Service,
        RecordKind::Routing,
    ];

    /// The record's full Avro name, e.g. `dev.statehouse.v1.EventRecord`.
    pub const fn name(self) -> &'static str {
        match self {
            RecordKind::Event => "dev.statehouse.v1.EventRecord",
            RecordKind::Value => "dev.statehouse.v1.ValueRecord",
            RecordKind::ValueDeletion => "dev.statehouse.v1.ValueDeletion",
            RecordKind::CrdtDelta => "dev.statehouse.v1.CrdtDeltaRecord",
            RecordKind::Service => "dev.statehouse.v1.ServiceRecord",
            RecordKind::Routing => "dev.statehouse.v1.RoutingRecord",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `.avsc` files shipped in `schemas/avro/`, as text.
///
/// A shipped file is never edited (that would change its fingerprint and
/// make records written with it unreadable): to change a schema, copy the
/// current file to `history/<name>.v<N>.avsc`, edit the current file, bump
/// its version in `SHIPPED`, and pin the new fingerprint in the tests.
pub mod files {
    /// `avro/event_record.avsc` (EventRecord version 2, current).
    pub const EVENT_RECORD: &str = include_str!("../../avro/event_record.avsc");
    /// `avro/history/event_record.v1.avsc` (EventRecord version 1).
    pub const EVENT_RECORD_V1: &str = include_str!("../../avro/history/event_record.v1.avsc");
    /// `avro/value_record.avsc` (ValueRecord version 2, current).
    pub const VALUE_RECORD: &str = include_str!("../../avro/value_record.avsc");
    /// `avro/history/value_record.v1.avsc` (ValueRecord version 1).
    pub const VALUE_RECORD_V1: &str = include_str!("../../avro/history/value_record.v1.avsc");
    /// `avro/value_deletion.avsc` (ValueDeletion version 1, current).
    pub const VALUE_DELETION: &str = include_str!("../../avro/value_deletion.avsc");
    /// `avro/crdt_delta_record.avsc` (CrdtDeltaRecord version 2, current).
    pub const CRDT_DELTA_RECORD: &str = include_str!("../../avro/crdt_delta_record.avsc");
    /// `avro/history/crdt_delta_record.v1.avsc` (CrdtDeltaRecord version 1).
    pub const CRDT_DELTA_RECORD_V1: &str =
        include_str!("../../avro/history/crdt_delta_record.v1.avsc");
    /// `avro/service_record.avsc` (ServiceRecord version 1, current).
    pub const SERVICE_RECORD: &str = include_str!("../../avro/service_record.avsc");
    /// `avro/routing_record.avsc` (RoutingRecord version 1, current).
    pub const ROUTING_RECORD: &str = include_str!("../../avro/routing_record.avsc");
    /// `avro/README.md`: the format, for consumers in any language.
    pub const README: &str = include_str!("../../avro/README.md");
}

struct Shipped {
    kind: RecordKind,
    version: u32,
    path: &'static str,
    source: &'static str,
}

/// Every shipped schema version. The highest version of a kind is its
/// current schema, used to write and as the reader schema.
const SHIPPED: &[Shipped] = &[
    Shipped {
        kind: RecordKind::Event,
        version: 1,
        path: "history/event_record.v1.avsc",
        source: files::EVENT_RECORD_V1,
    },
    Shipped {
        kind: RecordKind::Event,
        version: 2,
        path: "event_record.avsc",
        source: files::EVENT_RECORD,
    },
    Shipped {
        kind: RecordKind::Value,
        version: 1,
        path: "history/value_record.v1.avsc",
        source: files::VALUE_RECORD_V1,
    },
    Shipped {
        kind: RecordKind::Value,
        version: 2,
        path: "value_record.avsc",
        source: files::VALUE_RECORD,
    },
    Shipped {
        kind: RecordKind::ValueDeletion,
        version: 1,
        path: "value_deletion.avsc",
        source: files::VALUE_DELETION,
    },
    Shipped {
        kind: RecordKind::CrdtDelta,
        version: 1,
        path: "history/crdt_delta_record.v1.avsc",
        source: files::CRDT_DELTA_RECORD_V1,
    },
    Shipped {
        kind: RecordKind::CrdtDelta,
        version: 2,
        path: "crdt_delta_record.avsc",
        source: files::CRDT_DELTA_RECORD,
    },
    Shipped {
        kind: RecordKind::Service,
        version: 1,
        path: "service_record.avsc",
        source: files::SERVICE_RECORD,
    },
    Shipped {
        kind: RecordKind::Routing,
        version: 1,
        path: "routing_record.avsc",
        source: files::ROUTING_RECORD,
    },
];

/// One shipped schema version of one record kind.
pub struct SchemaVersion {
    kind: RecordKind,
    version: u32,
    path: &'static str,
    source: &'static str,
    canonical_form: String,
    fingerprint: u64,
    header: [u8; HEADER_LEN],
    schema: Schema,
    is_current: bool,
    /// Position in `Registry::codecs`.
    index: usize,
}

impl SchemaVersion {
    /// The record kind.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// The record's full Avro name.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The version number, from 1.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The file, relative to `schemas/avro/`.
    pub fn path(&self) -> &'static str {
        self.path
    }

    /// The `.avsc` text.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The schema's Parsing Canonical Form (what the fingerprint is taken of).
    pub fn canonical_form(&self) -> &str {
        &self.canonical_form
    }

    /// The CRC-64-AVRO fingerprint of the canonical form. The single-object
    /// header carries it as 8 little-endian bytes.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The 10-byte single-object header of records written with this schema.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.header
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Whether this is the version Statehouse writes (and reads into).
    pub fn is_current(&self) -> bool {
        self.is_current
    }
}

impl fmt::Debug for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaVersion")
            .field("name", &self.name())
            .field("version", &self.version)
            .field("path", &self.path)
            .field("fingerprint", &format_args!("{:#018x}", self.fingerprint))
            .field("is_current", &self.is_current)
            .finish_non_exhaustive()
    }
}

struct Codec {
    info: &'static SchemaVersion,
    /// Reads this version's bytes: straight into Rust types for the current
    /// version, through schema resolution to the current version otherwise.
    reader: GenericDatumReader<'static>,
    /// Current versions only.
    writer: Option<GenericDatumWriter<'static>>,
}

/// Every shipped schema version, by fingerprint. See [`Registry::global`].
pub struct Registry {
    codecs: Vec<Codec>,
    by_fingerprint: HashMap<u64, usize>,
    current: [usize; RecordKind::ALL.len()],
}

static GLOBAL: LazyLock<Registry> = LazyLock::new(Registry::build);

impl Registry {
    /// The registry of the schemas compiled into this build, built (schemas
    /// parsed, encoders and decoders resolved) on first use.
    pub fn global() -> &'static Registry {
        &GLOBAL
    }

    /// Every shipped version, oldest first per kind.
    pub fn versions(&self) -> impl Iterator<Item = &'static SchemaVersion> + '_ {
        self.codecs.iter().map(|codec| codec.info)
    }

    /// The current (written) version of a kind.
    pub fn current(&self, kind: RecordKind) -> &'static SchemaVersion {
        self.codecs[self.current[kind.index()]].info
    }

    /// The shipped version with this fingerprint.
    pub fn lookup(&self, fingerprint: u64) -> Option<&'static SchemaVersion> {
        self.by_fingerprint
            .get(&fingerprint)
            .map(|&i| self.codecs[i].info)
    }

    /// Appends the single-object encoding of `record` to `buf`. On error
    /// `buf` is left as it was.
    pub(crate) fn encode<T: AvroRecord>(&self, record: &T, buf: &mut Vec<u8>) -> Result<(), Error> {
        let codec = &self.codecs[self.current[T::KIND.index()]];
        let writer = codec
            .writer
            .as_ref()
            .expect("every current schema version has a writer");
        let start = buf.len();
        buf.extend_from_slice(&codec.info.header);
        writer.write_ser(buf, record).map_err(|source| {
            buf.truncate(start);
            Error::Encode {
                record: T::KIND.name(),
                source,
            }
        })?;
        Ok(())
    }

    /// Finds the writer schema of a single-object encoded record.
    pub(crate) fn writer_of<'b>(
        &self,
        bytes: &'b [u8],
    ) -> Result<(&'static SchemaVersion, &'b [u8]), Error> {
        let (fingerprint, body) = split_header(bytes)?;
        let index = *self
            .by_fingerprint
            .get(&fingerprint)
            .ok_or(Error::UnknownFingerprint { fingerprint })?;
        Ok((self.codecs[index].info, body))
    }

    /// Decodes a single-object encoded record of kind `T`, resolving an older
    /// writer schema to the current one.
    pub(crate) fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, Error> {
        let (info, body) = self.writer_of(bytes)?;
        if info.kind != T::KIND {
            return Err(Error::WrongRecord {
                expected: T::KIND.name(),
                found: info.name(),
                version: info.version,
            });
        }
        self.decode_body(info, body)
    }

    pub(crate) fn decode_body<T: DeserializeOwned>(
        &self,
        info: &'static SchemaVersion,
        body: &[u8],
    ) -> Result<T, Error> {
        let codec = &self.codecs[info.index];
        let decode_error = |source| Error::Decode {
            record: info.name(),
            version: info.version,
            source,
        };
        let mut rest = body;
        let record = if info.is_current {
            codec.reader.read_deser(&mut rest).map_err(decode_error)?
        } else {
            // `read_deser` cannot resolve schemas yet: go through a Value.
            let value = codec.reader.read_value(&mut rest).map_err(decode_error)?;
            apache_avro::from_value(&value).map_err(decode_error)?
        };
        if !rest.is_empty() {
            return Err(Error::TrailingBytes {
                record: info.name(),
                version: info.version,
                count: rest.len(),
            });
        }
        Ok(record)
    }

    fn build() -> Registry {
        let mut infos: Vec<&'static SchemaVersion> = Vec::with_capacity(SHIPPED.len());
        for (index, shipped) in SHIPPED.iter().enumerate() {
            let schema = Schema::parse_str(shipped.source).unwrap_or_else(|e| {
                panic!("shipped Avro schema {} does not parse: {e}", shipped.path)
            });
            let full_name = match &schema {
                Schema::Record(record) => record.name.fullname(None),
                _ => String::new(),
            };
            assert_eq!(
                full_name,
                shipped.kind.name(),
                "shipped Avro schema {} is not a {} record",
                shipped.path,
                shipped.kind.name()
            );
            let canonical_form = canonical::parsing_canonical_form(shipped.source)
                .unwrap_or_else(|e| panic!("shipped Avro schema {}: {e}", shipped.path));
            let fingerprint = canonical::crc64_avro(canonical_form.as_bytes());
            let mut header = [0u8; HEADER_LEN];
            header[..2].copy_from_slice(&MARKER);
            header[2..].copy_from_slice(&fingerprint.to_le_bytes());
            let is_current = !SHIPPED
                .iter()
                .any(|other| other.kind == shipped.kind && other.version > shipped.version);
            // Parsed once per process and kept for its lifetime, so that the
            // encoders and decoders below can borrow it.
            infos.push(Box::leak(Box::new(SchemaVersion {
                kind: shipped.kind,
                version: shipped.version,
                path: shipped.path,
                source: shipped.source,
                canonical_form,
                fingerprint,
                header,
                schema,
                is_current,
                index,
            })));
        }

        let mut current = [usize::MAX; RecordKind::ALL.len()];
        let mut by_fingerprint = HashMap::with_capacity(infos.len());
        for (i, info) in infos.iter().enumerate() {
            if let Some(previous) = by_fingerprint.insert(info.fingerprint, i) {
                panic!(
                    "shipped Avro schemas {} and {} have the same fingerprint {:#018x}",
                    infos[previous].path, info.path, info.fingerprint
                );
            }
            if info.is_current {
                current[info.kind.index()] = i;
            }
        }
        for kind in RecordKind::ALL {
            assert_ne!(
                current[kind.index()],
                usize::MAX,
                "no shipped schema for {kind}"
            );
        }

        let codecs = infos
            .iter()
            .map(|&info| {
                let reader = if info.is_current {
                    GenericDatumReader::builder(&info.schema).build()
                } else {
                    let current_schema = &infos[current[info.kind.index()]].schema;
                    GenericDatumReader::builder(&info.schema)
                        .reader_schema(current_schema)
                        .build()
                }
                .unwrap_or_else(|e| panic!("Avro reader for {}: {e}", info.path));
                let writer = info.is_current.then(|| {
                    GenericDatumWriter::builder(&info.schema)
                        .build()
                        .unwrap_or_else(|e| panic!("Avro writer for {}: {e}", info.path))
                });
                Codec {
                    info,
                    reader,
                    writer,
                }
            })
            .collect();

        Registry {
            codecs,
            by_fingerprint,
            current,
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.versions()).finish()
    }
}

/// Splits a single-object encoded record into its writer fingerprint and body.
pub(crate) fn split_header(bytes: &[u8]) -> Result<(u64, &[u8]), Error> {
    if bytes.len() < MARKER.len() || bytes[..2] != MARKER {
        let found = bytes
            .iter()
            .take(2)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(Error::BadMarker {
            found: if found.is_empty() {
                "nothing (empty input)".to_owned()
            } else {
                found
            },
        });
    }
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(Error::TruncatedHeader { len: bytes.len() });
    };
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&header[2..]);
    Ok((u64::from_le_bytes(fingerprint), body))
}
