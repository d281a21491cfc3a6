//! A hand-written CQL native protocol v4 client for readiness: `STARTUP` → `READY`, then one
//! `QUERY` whose `RESULT` Rows are decoded. Written from `native_protocol_v4.spec`.
//!
//! A frame is a 9-byte header (`version`, `flags`, `stream`, `opcode`, `length`) + body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::wire::{Reader, put_short_string};

const REQUEST_V4: u8 = 0x04;
const RESPONSE_V4: u8 = 0x84;

const OP_ERROR: u8 = 0x00;
const OP_STARTUP: u8 = 0x01;
const OP_READY: u8 = 0x02;
const OP_AUTHENTICATE: u8 = 0x03;
const OP_QUERY: u8 = 0x07;
const OP_RESULT: u8 = 0x08;

const FLAG_COMPRESSION: u8 = 0x01;
const FLAG_TRACING: u8 = 0x02;
const FLAG_CUSTOM_PAYLOAD: u8 = 0x04;
const FLAG_WARNING: u8 = 0x08;

const CONSISTENCY_ONE: u16 = 0x0001;
const RESULT_ROWS: i32 = 0x0002;

/// A decoded response frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) flags: u8,
    pub(crate) stream: i16,
    pub(crate) opcode: u8,
    pub(crate) body: Vec<u8>,
}

/// A decoded `RESULT` of kind Rows: column names and raw cell values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rows {
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Option<Vec<u8>>>>,
}

/// Encodes a request frame.
pub(crate) fn encode_frame(stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(REQUEST_V4);
    out.push(0);
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(opcode);
    let len = i32::try_from(body.len()).expect("frame body too large");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// `STARTUP` with `{CQL_VERSION: 3.0.0}` and no compression.
pub(crate) fn startup(stream: i16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_be_bytes());
    put_short_string(&mut body, "CQL_VERSION");
    put_short_string(&mut body, "3.0.0");
    encode_frame(stream, OP_STARTUP, &body)
}

/// `QUERY` of `cql` at consistency ONE with no values or paging options.
pub(crate) fn query(stream: i16, cql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let len = i32::try_from(cql.len()).expect("query too long");
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(cql.as_bytes());
    body.extend_from_slice(&CONSISTENCY_ONE.to_be_bytes());
    body.push(0); // query flags
    encode_frame(stream, OP_QUERY, &body)
}

/// Reads one response frame; strips the tracing id and warnings the flags announce.
pub(crate) fn read_frame(input: &mut impl Read) -> Result<Frame> {
    let mut header = [0; 9];
    input.read_exact(&mut header)?;
    ensure!(
        header[0] == RESPONSE_V4,
        "not a CQL v4 response (version byte {:#04x})",
        header[0]
    );
    let flags = header[1];
    let stream = i16::from_be_bytes([header[2], header[3]]);
    let opcode = header[4];
    let len = i32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    ensure!(
        (0..=256 << 20).contains(&len),
        "implausible frame length {len}"
    );
    let mut body = vec![0; usize::try_from(len)?];
    input.read_exact(&mut body)?;
    ensure!(
        flags & (FLAG_COMPRESSION | FLAG_CUSTOM_PAYLOAD) == 0,
        "unexpected compressed or custom-payload frame"
    );
    let mut r = Reader::new(&body);
    if flags & FLAG_TRACING != 0 {
        r.take(16)?;
    }
    if flags & FLAG_WARNING != 0 {
        for _ in 0..r.u16()? {
            string(&mut r)?;
        }
    }
    let skip = body.len() - r.remaining();
    body.drain(..skip);
    Ok(Frame {
        flags,
        stream,
        opcode,
        body,
    })
}

/// A `[string]`.
fn string(r: &mut Reader<'_>) -> Result<String> {
    let len = r.u16()?;
    r.utf8(usize::from(len))
}

/// Decodes an `ERROR` body into `(code, message)`.
pub(crate) fn parse_error(body: &[u8]) -> Result<(i32, String)> {
    let mut r = Reader::new(body);
    Ok((r.i32()?, string(&mut r)?))
}

/// Skips a column type `[option]` (recursing into collections, UDTs and tuples).
fn skip_type(r: &mut Reader<'_>) -> Result<()> {
    match r.u16()? {
        0x0000 => {
            string(r)?; // custom: class name
        }
        0x0020 | 0x0022 => skip_type(r)?, // list, set
        0x0021 => {
            skip_type(r)?; // map key
            skip_type(r)?; // map value
        }
        0x0030 => {
            string(r)?; // udt keyspace
            string(r)?; // udt name
            for _ in 0..r.u16()? {
                string(r)?;
                skip_type(r)?;
            }
        }
        0x0031 => {
            for _ in 0..r.u16()? {
                skip_type(r)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Decodes a `RESULT` body of kind Rows.
pub(crate) fn parse_rows(body: &[u8]) -> Result<Rows> {
    let mut r = Reader::new(body);
    let kind = r.i32()?;
    ensure!(kind == RESULT_ROWS, "RESULT kind {kind:#06x} is not Rows");
    let flags = r.i32()?;
    let count = Reader::len_or_null(r.i32()?.into()).context("negative column count")?;
    if flags & 0x0002 != 0 {
        let len = r.i32()?;
        if let Some(n) = Reader::len_or_null(len.into()) {
            r.take(n)?; // paging state
        }
    }
    let mut columns = Vec::with_capacity(count.min(1024));
    if flags & 0x0004 == 0 {
        let global = flags & 0x0001 != 0;
        if global {
            string(&mut r)?;
            string(&mut r)?;
        }
        for _ in 0..count {
            if !global {
                string(&mut r)?;
                string(&mut r)?;
            }
            columns.push(string(&mut r)?);
            skip_type(&mut r)?;
        }
    }
    let row_count = Reader::len_or_null(r.i32()?.into()).context("negative row count")?;
    let mut rows = Vec::with_capacity(row_count.min(1024));
    for _ in 0..row_count {
        let mut row = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.i32()?;
            row.push(
                Reader::len_or_null(len.into())
                    .map(|n| r.take(n).map(<[u8]>::to_vec))
                    .transpose()?,
            );
        }
        rows.push(row);
    }
    Ok(Rows { columns, rows })
}

fn expect(frame: &Frame, opcode: u8, what: &str) -> Result<()> {
    match frame.opcode {
        op if op == opcode => Ok(()),
        OP_ERROR => {
            let (code, message) = parse_error(&frame.body)?;
            bail!("{what} failed: error {code:#06x}: {message}")
        }
        OP_AUTHENTICATE => bail!("{what}: the server requires authentication"),
        op => bail!("{what}: unexpected opcode {op:#04x}"),
    }
}

/// Connects, starts a session and returns `release_version` from `system.local`.
pub(crate) fn release_version(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(&startup(0))?;
    expect(&read_frame(&mut stream)?, OP_READY, "STARTUP")?;
    stream.write_all(&query(1, "SELECT release_version FROM system.local"))?;
    let frame = read_frame(&mut stream)?;
    expect(&frame, OP_RESULT, "QUERY")?;
    ensure!(
        frame.stream == 1,
        "response on stream {} instead of 1",
        frame.stream
    );
    let rows = parse_rows(&frame.body)?;
    let cell = rows
        .rows
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .context("system.local returned no release_version")?;
    Ok(String::from_utf8_lossy(&cell).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_startup() {
        let frame = startup(0);
        let mut expected = vec![0x04, 0, 0, 0, OP_STARTUP, 0, 0, 0, 22, 0, 1, 0, 11];
        expected.extend_from_slice(b"CQL_VERSION");
        expected.extend_from_slice(&[0, 5]);
        expected.extend_from_slice(b"3.0.0");
        assert_eq!(frame, expected);
    }

    #[test]
    fn encodes_query() {
        let frame = query(3, "SELECT 1");
        assert_eq!(&frame[..5], &[0x04, 0, 0, 3, OP_QUERY]);
        assert_eq!(&frame[5..9], &15i32.to_be_bytes());
        assert_eq!(&frame[9..13], &8i32.to_be_bytes());
        assert_eq!(&frame[13..21], b"SELECT 1");
        assert_eq!(&frame[21..], &[0, 1, 0]);
    }

    fn response(flags: u8, opcode: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![RESPONSE_V4, flags, 0, 1, opcode];
        out.extend_from_slice(&i32::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn decodes_ready_error_and_warnings() {
        let ready = read_frame(&mut response(0, OP_READY, &[]).as_slice()).unwrap();
        assert_eq!(
            (ready.opcode, ready.stream, ready.body.len()),
            (OP_READY, 1, 0)
        );

        let mut body = 0x2200i32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 3]);
        body.extend_from_slice(b"bad");
        let mut warned = vec![0, 1, 0, 2];
        warned.extend_from_slice(b"hm");
        warned.extend_from_slice(&body);
        let frame = read_frame(&mut response(FLAG_WARNING, OP_ERROR, &warned).as_slice()).unwrap();
        assert_eq!(
            parse_error(&frame.body).unwrap(),
            (0x2200, "bad".to_owned())
        );
        assert!(expect(&frame, OP_READY, "STARTUP").is_err());

        let not_v4 = [0x83, 0, 0, 0, OP_READY, 0, 0, 0, 0];
        assert!(read_frame(&mut not_v4.as_slice()).is_err());
    }

    #[test]
    fn decodes_rows() {
        let mut body = Vec::new();
        body.extend_from_slice(&RESULT_ROWS.to_be_bytes());
        body.extend_from_slice(&1i32.to_be_bytes()); // global_tables_spec
        body.extend_from_slice(&2i32.to_be_bytes()); // two columns
        for s in ["system", "local", "release_version"] {
            body.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        body.extend_from_slice(&0x000Du16.to_be_bytes()); // varchar
        body.extend_from_slice(&[0, 4]);
        body.extend_from_slice(b"tags");
        body.extend_from_slice(&[0, 0x21, 0, 0x0D, 0, 0x20, 0, 0x09]); // map<text, list<int>>
        body.extend_from_slice(&1i32.to_be_bytes()); // one row
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"5.0.6");
        body.extend_from_slice(&(-1i32).to_be_bytes()); // null
        let rows = parse_rows(&body).unwrap();
        assert_eq!(rows.columns, ["release_version", "tags"]);
        assert_eq!(rows.rows, vec![vec![Some(b"5.0.6".to_vec()), None]]);
        assert!(parse_rows(&body[..body.len() - 2]).is_err());
        assert!(parse_rows(&0x0001i32.to_be_bytes()).is_err());
    }
}
