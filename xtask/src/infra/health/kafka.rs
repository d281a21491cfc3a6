//! A hand-written Kafka wire client for readiness: `ApiVersions` v0 and a topic-less
//! `Metadata` (v4–v8, non-flexible), encoded from the public protocol guide.
//!
//! Requests are `int32 size` + header v1 (`api_key`, `api_version`, `correlation_id`,
//! nullable `client_id`) + body; responses are `int32 size` + header v0 (`correlation_id`)
//! + body. `ApiVersions` responses always use header v0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::wire::{Reader, put_short_string};

const API_METADATA: i16 = 3;
const API_VERSIONS: i16 = 18;
const CLIENT_ID: &str = "statehouse-xtask";
/// `UNSUPPORTED_VERSION`: the broker still lists its versions in a v0 body.
const UNSUPPORTED_VERSION: i16 = 35;

/// One API's supported version range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApiRange {
    pub(crate) key: i16,
    pub(crate) min: i16,
    pub(crate) max: i16,
}

/// A broker as `Metadata` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub(crate) node_id: i32,
    pub(crate) host: String,
    pub(crate) port: i32,
}

/// What a `Metadata` response says about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub(crate) brokers: Vec<Broker>,
    pub(crate) cluster_id: Option<String>,
    pub(crate) controller_id: i32,
}

/// The result of a successful probe.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) api_count: usize,
    pub(crate) metadata_version: i16,
    pub(crate) metadata: Metadata,
}

/// Encodes a request with header v1.
pub(crate) fn encode_request(
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    body: &[u8],
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(32 + body.len());
    msg.extend_from_slice(&[0; 4]);
    msg.extend_from_slice(&api_key.to_be_bytes());
    msg.extend_from_slice(&api_version.to_be_bytes());
    msg.extend_from_slice(&correlation_id.to_be_bytes());
    put_short_string(&mut msg, CLIENT_ID);
    msg.extend_from_slice(body);
    let size = i32::try_from(msg.len() - 4).expect("request too large");
    msg[..4].copy_from_slice(&size.to_be_bytes());
    msg
}

/// `ApiVersions` v0: an empty body.
pub(crate) fn api_versions_request(correlation_id: i32) -> Vec<u8> {
    encode_request(API_VERSIONS, 0, correlation_id, &[])
}

/// Decodes an `ApiVersions` v0 body (after the correlation id).
pub(crate) fn parse_api_versions(body: &[u8]) -> Result<Vec<ApiRange>> {
    let mut r = Reader::new(body);
    let error = r.i16()?;
    ensure!(
        error == 0 || error == UNSUPPORTED_VERSION,
        "ApiVersions failed with error code {error}"
    );
    let count = r.i32()?;
    let count = Reader::len_or_null(count.into()).context("null ApiVersions array")?;
    let mut apis = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        apis.push(ApiRange {
            key: r.i16()?,
            min: r.i16()?,
            max: r.i16()?,
        });
    }
    Ok(apis)
}

/// The highest non-flexible `Metadata` version (4..=8) the broker supports.
pub(crate) fn pick_metadata_version(apis: &[ApiRange]) -> Result<i16> {
    let range = apis
        .iter()
        .find(|a| a.key == API_METADATA)
        .context("broker does not support Metadata")?;
    (4..=8)
        .rev()
        .find(|v| (range.min..=range.max).contains(v))
        .with_context(|| {
            format!(
                "no Metadata version in 4..=8 (broker: {}..={})",
                range.min, range.max
            )
        })
}

/// `Metadata` v4..=v8 for no topics at all (an empty topic array, not null = "all").
pub(crate) fn metadata_request(correlation_id: i32, version: i16) -> Vec<u8> {
    assert!(
        (4..=8).contains(&version),
        "only non-flexible Metadata v4..v8"
    );
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_be_bytes()); // topics: []
    body.push(0); // allow_auto_topic_creation: false
    if version >= 8 {
        body.push(0); // include_cluster_authorized_operations
        body.push(0); // include_topic_authorized_operations
    }
    encode_request(API_METADATA, version, correlation_id, &body)
}

/// Decodes the start of a `Metadata` v4..=v8 body (after the correlation id).
pub(crate) fn parse_metadata(body: &[u8]) -> Result<Metadata> {
    let mut r = Reader::new(body);
    let _throttle_ms = r.i32()?;
    let count = Reader::len_or_null(r.i32()?.into()).context("null broker array")?;
    let mut brokers = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let node_id = r.i32()?;
        let host = string(&mut r)?.context("null broker host")?;
        let port = r.i32()?;
        let _rack = string(&mut r)?;
        brokers.push(Broker {
            node_id,
            host,
            port,
        });
    }
    let cluster_id = string(&mut r)?;
    let controller_id = r.i32()?;
    Ok(Metadata {
        brokers,
        cluster_id,
        controller_id,
    })
}

/// A Kafka nullable `STRING` (int16 length, -1 = null).
fn string(r: &mut Reader<'_>) -> Result<Option<String>> {
    let len = r.i16()?;
    Reader::len_or_null(len.into())
        .map(|n| r.utf8(n))
        .transpose()
}

/// Sends one request and returns the response body after checking its correlation id.
fn round_trip(stream: &mut TcpStream, request: &[u8], correlation_id: i32) -> Result<Vec<u8>> {
    stream.write_all(request)?;
    let mut size = [0; 4];
    stream.read_exact(&mut size)?;
    let size = i32::from_be_bytes(size);
    ensure!(
        (4..=16 << 20).contains(&size),
        "implausible response size {size}"
    );
    let mut body = vec![0; usize::try_from(size)?];
    stream.read_exact(&mut body)?;
    let got = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    if got != correlation_id {
        bail!("correlation id mismatch: sent {correlation_id}, got {got}");
    }
    body.drain(..4);
    Ok(body)
}

/// Connects to `addr`, asks `ApiVersions` and `Metadata`, and returns what the broker said.
pub(crate) fn probe(addr: SocketAddr, timeout: Duration) -> Result<Probe> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let apis = parse_api_versions(&round_trip(&mut stream, &api_versions_request(1), 1)?)?;
    let version = pick_metadata_version(&apis)?;
    let metadata = parse_metadata(&round_trip(&mut stream, &metadata_request(2, version), 2)?)?;
    Ok(Probe {
        api_count: apis.len(),
        metadata_version: version,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_api_versions_v0() {
        let req = api_versions_request(7);
        let mut expected = vec![0, 0, 0, 26, 0, 18, 0, 0, 0, 0, 0, 7, 0, 16];
        expected.extend_from_slice(b"statehouse-xtask");
        assert_eq!(req, expected);
    }

    #[test]
    fn encodes_metadata_without_topics() {
        let v4 = metadata_request(2, 4);
        assert_eq!(&v4[4..8], &[0, 3, 0, 4]);
        assert_eq!(&v4[v4.len() - 5..], &[0, 0, 0, 0, 0]);
        let v8 = metadata_request(2, 8);
        assert_eq!(v8.len(), v4.len() + 2);
        let size = i32::from_be_bytes([v8[0], v8[1], v8[2], v8[3]]);
        assert_eq!(usize::try_from(size).unwrap(), v8.len() - 4);
    }

    #[test]
    fn decodes_api_versions_and_picks_metadata() {
        let mut body = vec![0, 0, 0, 0, 0, 2];
        body.extend_from_slice(&[0, 3, 0, 0, 0, 12]); // Metadata 0..=12
        body.extend_from_slice(&[0, 18, 0, 0, 0, 4]); // ApiVersions 0..=4
        let apis = parse_api_versions(&body).unwrap();
        assert_eq!(
            apis[1],
            ApiRange {
                key: 18,
                min: 0,
                max: 4
            }
        );
        assert_eq!(pick_metadata_version(&apis).unwrap(), 8);
        let old_only = [ApiRange {
            key: 3,
            min: 0,
            max: 3,
        }];
        assert!(pick_metadata_version(&old_only).is_err());
        let new_only = [ApiRange {
            key: 3,
            min: 9,
            max: 13,
        }];
        assert!(pick_metadata_version(&new_only).is_err());
        assert!(parse_api_versions(&[0, 1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn decodes_metadata() {
        let mut body = Vec::new();
        body.extend_from_slice(&0i32.to_be_bytes()); // throttle
        body.extend_from_slice(&1i32.to_be_bytes()); // one broker
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&[0, 9]);
        body.extend_from_slice(b"127.0.0.1");
        body.extend_from_slice(&9092i32.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes()); // rack: null
        body.extend_from_slice(&[0, 4]);
        body.extend_from_slice(b"abcd");
        body.extend_from_slice(&1i32.to_be_bytes()); // controller
        body.extend_from_slice(&0i32.to_be_bytes()); // topics: []
        let md = parse_metadata(&body).unwrap();
        assert_eq!(
            md,
            Metadata {
                brokers: vec![Broker {
                    node_id: 1,
                    host: "127.0.0.1".into(),
                    port: 9092
                }],
                cluster_id: Some("abcd".into()),
                controller_id: 1,
            }
        );
        assert!(parse_metadata(&body[..20]).is_err());
    }
}
