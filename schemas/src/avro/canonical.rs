//! Avro schema fingerprints: Parsing Canonical Form and CRC-64-AVRO.
//!
//! Implemented here, from the Avro specification, rather than taken from
//! `apache-avro`: for a primitive carrying a logical type
//! (`{"type":"long","logicalType":"timestamp-millis"}`) the reference Java
//! implementation, and the specification's [PRIMITIVES] rule, reduce the
//! schema to `"long"`, while `apache-avro` 0.22 (like Python's `avro`) keeps
//! `{"type":"long"}`, which gives a different fingerprint. Statehouse follows
//! Java (`SchemaNormalization.parsingFingerprint64`), what most Kafka tooling
//! uses.

use std::{collections::HashSet, sync::LazyLock};

use serde_json::Value as Json;

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Parsing Canonical Form of a schema given as JSON text.
pub(crate) fn parsing_canonical_form(schema_json: &str) -> Result<String, String> {
    let json: Json = serde_json::from_str(schema_json).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(schema_json.len() / 2);
    write_pcf(&json, "", &mut HashSet::new(), &mut out)?;
    Ok(out)
}

fn fullname(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

fn namespace_of(fullname: &str) -> &str {
    fullname.rsplit_once('.').map_or("", |(ns, _)| ns)
}

fn quoted(out: &mut String, s: &str) {
    out.push('"');
    out.push_str(s);
    out.push('"');
}

fn write_pcf(
    json: &Json,
    namespace: &str,
    defined: &mut HashSet<String>,
    out: &mut String,
) -> Result<(), String> {
    match json {
        Json::String(name) if PRIMITIVES.contains(&name.as_str()) => quoted(out, name),
        // A reference to a named type defined earlier.
        Json::String(name) => quoted(out, &fullname(name, namespace)),
        Json::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_pcf(branch, namespace, defined, out)?;
            }
            out.push(']');
        }
        Json::Object(map) => match map.get("type") {
            Some(Json::String(ty)) => match ty.as_str() {
                // [PRIMITIVES] + [STRIP]: logicalType and any other attribute go.
                t if PRIMITIVES.contains(&t) => quoted(out, t),
                "record" | "error" | "enum" | "fixed" => {
                    let name = map
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| format!("a {ty} schema without a name"))?;
                    let explicit_ns = map.get("namespace").and_then(Json::as_str);
                    let full = fullname(name, explicit_ns.unwrap_or(namespace));
                    if !defined.insert(full.clone()) {
                        quoted(out, &full);
                        return Ok(());
                    }
                    out.push_str("{\"name\":");
                    quoted(out, &full);
                    out.push_str(",\"type\":");
                    quoted(out, ty);
                    match ty.as_str() {
                        "enum" => {
                            out.push_str(",\"symbols\":[");
                            let symbols = map
                                .get("symbols")
                                .and_then(Json::as_array)
                                .ok_or("an enum without symbols")?;
                            for (i, symbol) in symbols.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                quoted(out, symbol.as_str().ok_or("a non-string enum symbol")?);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            let size = map
                                .get("size")
                                .and_then(Json::as_u64)
                                .ok_or("a fixed without a size")?;
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            out.push_str(",\"fields\":[");
                            let fields = map
                                .get("fields")
                                .and_then(Json::as_array)
                                .ok_or("a record without fields")?;
                            let inner_ns = namespace_of(&full).to_owned();
                            for (i, field) in fields.iter().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                let field_name = field
                                    .get("name")
                                    .and_then(Json::as_str)
                                    .ok_or("a record field without a name")?;
                                let field_type =
                                    field.get("type").ok_or("a record field without a type")?;
                                out.push_str("{\"name\":");
                                quoted(out, field_name);
                                out.push_str(",\"type\":");
                                write_pcf(field_type, &inner_ns, defined, out)?;
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                "array" => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    write_pcf(
                        map.get("items").ok_or("an array without items")?,
                        namespace,
                        defined,
                        out,
                    )?;
                    out.push('}');
                }
                "map" => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    write_pcf(
                        map.get("values").ok_or("a map without values")?,
                        namespace,
                        defined,
                        out,
                    )?;
                    out.push('}');
                }
                // `{"type": "SomeNamedType"}`: a reference.
                name => quoted(out, &fullname(name, namespace)),
            },
            // `{"type": {...}}` or `{"type": [...]}`: a wrapped schema.
            Some(inner) => write_pcf(inner, namespace, defined, out)?,
            None => return Err("a schema object without a type".to_owned()),
        },
        other => return Err(format!("not a schema: {other}")),
    }
    Ok(())
}

/// The CRC-64-AVRO ("Rabin") fingerprint of `data`, as specified in the Avro
/// specification's "Schema Fingerprints" section.
pub(crate) fn crc64_avro(data: &[u8]) -> u64 {
    static TABLE: LazyLock<[u64; 256]> = LazyLock::new(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

    let mut fp = EMPTY;
    for &byte in data {
        fp = (fp >> 8) ^ TABLE[((fp ^ u64::from(byte)) & 0xff) as usize];
    }
    fp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_follows_the_spec() {
        // [PRIMITIVES], [STRIP] (doc, default, logicalType), [FULLNAMES] with
        // an inherited namespace, [ORDER], and references to defined names.
        let schema = r#"{
          "doc": "d", "namespace": "a.b", "type": "record", "name": "R",
          "fields": [
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "x"},
            {"name": "i", "type": {"type": "int"}},
            {"name": "w", "type": {"type": "record", "name": "W", "fields": [{"name": "e", "type": "long"}]}},
            {"name": "o", "type": ["null", "W"], "default": null},
            {"name": "c", "type": {"type": "enum", "name": "x.E", "symbols": ["A", "B"], "default": "A"}},
            {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
            {"name": "f", "type": {"type": "fixed", "size": 4, "name": "F"}}
          ]
        }"#;
        let pcf = parsing_canonical_form(schema).unwrap();
        assert_eq!(
            pcf,
            concat!(
                r#"{"name":"a.b.R","type":"record","fields":["#,
                r#"{"name":"t","type":"long"},"#,
                r#"{"name":"i","type":"int"},"#,
                r#"{"name":"w","type":{"name":"a.b.W","type":"record","fields":[{"name":"e","type":"long"}]}},"#,
                r#"{"name":"o","type":["null","a.b.W"]},"#,
                r#"{"name":"c","type":{"name":"x.E","type":"enum","symbols":["A","B"]}},"#,
                r#"{"name":"m","type":{"type":"map","values":{"type":"array","items":"string"}}},"#,
                r#"{"name":"f","type":{"name":"a.b.F","type":"fixed","size":4}}"#,
                "]}"
            )
        );
        assert_eq!(parsing_canonical_form(r#""int""#).unwrap(), r#""int""#);
        assert!(parsing_canonical_form(r#"{"type": "record"}"#).is_err());
        assert!(parsing_canonical_form("42").is_err());
    }

    #[test]
    fn crc64_avro_matches_apache_avro_without_logical_types() {
        // Where the canonical forms agree (no logical types), our fingerprint
        // must equal the Avro library's single-object header.
        for json in [
            r#""null""#,
            r#""string""#,
            r#"{"type":"record","name":"dev.statehouse.v1.Writer","fields":[{"name":"processor_id","type":"string"},{"name":"epoch","type":"long"}]}"#,
            r#"{"type":"enum","name":"E","symbols":["LOCAL","MAJORITY","ALL"]}"#,
        ] {
            let schema = apache_avro::Schema::parse_str(json).unwrap();
            let header = apache_avro::headers::HeaderBuilder::build_header(
                &apache_avro::headers::RabinFingerprintHeader::from_schema(&schema),
            );
            let ours = crc64_avro(parsing_canonical_form(json).unwrap().as_bytes());
            assert_eq!(&header[2..], &ours.to_le_bytes(), "{json}");
            assert_eq!(
                parsing_canonical_form(json).unwrap(),
                schema.canonical_form()
            );
        }
        assert_eq!(crc64_avro(b""), 0xc15d_213a_a4d7_a795);
        assert_ne!(crc64_avro(b"a"), crc64_avro(b"b"));
    }
}
