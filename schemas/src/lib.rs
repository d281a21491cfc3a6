//! Statehouse wire schemas: the Cloudstate protocol, Statehouse APIs, Avro records.
