//! The crate's error type.

/// What can go wrong encoding or decoding a Statehouse Avro record.
///
/// Every decoding failure of untrusted bytes is one of these; decoding never
/// panics. None of them is transient: retrying the same bytes fails the same
/// way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not start with the Avro single-object marker `C3 01`.
    #[error("not an Avro single-object record: it starts with {found}, expected the marker c3 01")]
    BadMarker {
        /// The first (up to two) bytes, in hex.
        found: String,
    },

    /// The bytes end inside the 10-byte single-object header.
    #[error("truncated Avro single-object header: {len} bytes, the header alone has 10")]
    TruncatedHeader {
        /// The length of the input.
        len: usize,
    },

    /// The header names a writer schema this build does not ship.
    #[error(
        "unknown Avro writer schema fingerprint {fingerprint:#018x} (CRC-64-AVRO of the \
         schema's Parsing Canonical Form): the record was written with a schema this build \
         does not know, e.g. by a newer Statehouse"
    )]
    UnknownFingerprint {
        /// The fingerprint found in the header.
        fingerprint: u64,
    },

    /// The record is a valid Statehouse record, but of another kind than asked for.
    #[error("expected an Avro {expected} record, found {found} (schema version {version})")]
    WrongRecord {
        /// The full Avro name asked for.
        expected: &'static str,
        /// The full Avro name of the writer schema.
        found: &'static str,
        /// The writer schema version.
        version: u32,
    },

    /// The body does not decode with the writer schema (corrupt or truncated).
    #[error("cannot decode Avro {record} (writer schema version {version}): {source}")]
    Decode {
        /// The full Avro name of the writer schema.
        record: &'static str,
        /// The writer schema version.
        version: u32,
        /// What the Avro library reported.
        #[source]
        source: apache_avro::Error,
    },

    /// Bytes are left over after the record: the input is corrupt.
    #[error("Avro {record} (writer schema version {version}) has {count} trailing bytes")]
    TrailingBytes {
        /// The full Avro name of the writer schema.
        record: &'static str,
        /// The writer schema version.
        version: u32,
        /// How many bytes are left over.
        count: usize,
    },

    /// A value does not fit the record's schema (a bug in the caller's data).
    #[error("cannot encode Avro {record}: {source}")]
    Encode {
        /// The full Avro name of the record.
        record: &'static str,
        /// What the Avro library reported.
        #[source]
        source: apache_avro::Error,
    },
}
