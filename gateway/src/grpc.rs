//! gRPC and gRPC-Web on the wire: content types, the length-prefixed message frame, and unary
//! responses (message + trailers, or trailers only).
//!
//! The gateway never re-encodes user messages: a request frame's bytes are handed to the
//! processor as they are ([`Bytes`] slices of the request body), and a reply's bytes are framed
//! and written back as they are.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tonic::body::Body;

use crate::Error;

/// What `grpc-message` escapes (besides non-ASCII): controls and '%'.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Length of the frame header: a flags byte and a 4-byte big-endian length.
const FRAME_HEADER: usize = 5;

/// How a client speaks gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Native gRPC (HTTP/2, trailers).
    Grpc,
    /// gRPC-Web: trailers travel in the body; `text` = base64-encoded body.
    Web {
        /// `application/grpc-web-text`.
        text: bool,
    },
}

impl Protocol {
    /// The protocol of a request, from its content type; `None` for anything that is not gRPC.
    pub(crate) fn of(headers: &HeaderMap) -> Option<Protocol> {
        let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/grpc" | "application/grpc+proto" => Some(Protocol::Grpc),
            "application/grpc-web" | "application/grpc-web+proto" => {
                Some(Protocol::Web { text: false })
            }
            "application/grpc-web-text" | "application/grpc-web-text+proto" => {
                Some(Protocol::Web { text: true })
            }
            _ => None,
        }
    }

    /// The `protocol` label of the call metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Web { .. } => "grpc-web",
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Protocol::Grpc => "application/grpc",
            Protocol::Web { text: false } => "application/grpc-web+proto",
            Protocol::Web { text: true } => "application/grpc-web-text+proto",
        })
    }
}

/// Reads the one request message of a unary call: at most `limit` message bytes, not
/// compressed, exactly one frame.
pub(crate) async fn read_message<B>(
    body: B,
    protocol: Protocol,
    limit: usize,
) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    parse_frame(read_body(body, protocol, limit).await?, limit)
}

/// Reads a whole request body (gRPC-Web text decoded): at most `limit` bytes of messages plus
/// one frame header.
pub(crate) async fn read_body<B>(body: B, protocol: Protocol, limit: usize) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let text = matches!(protocol, Protocol::Web { text: true });
    let body_limit = if text {
        (limit + FRAME_HEADER).div_ceil(3) * 4 + 4
    } else {
        limit + FRAME_HEADER
    };
    let collected = Limited::new(body, body_limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::RequestTooLarge { limit }
            } else {
                Error::Body(e.to_string())
            }
        })?
        .to_bytes();
    Ok(if text {
        Bytes::from(decode_base64_chunks(&collected)?)
    } else {
        collected
    })
}

/// The message of a body that holds exactly one uncompressed frame.
pub(crate) fn parse_frame(body: Bytes, limit: usize) -> Result<Bytes, Error> {
    if body.is_empty() {
        return Err(Error::BadFrame {
            reason: "no request message",
        });
    }
    let Some(header) = body.get(..FRAME_HEADER) else {
        return Err(Error::BadFrame {
            reason: "truncated message header",
        });
    };
    let end = FRAME_HEADER + message_len(header, limit)?;
    match body.len().cmp(&end) {
        std::cmp::Ordering::Less => Err(Error::BadFrame {
            reason: "truncated message",
        }),
        std::cmp::Ordering::Greater => Err(Error::BadFrame {
            reason: "more than one request message for a unary method",
        }),
        std::cmp::Ordering::Equal => Ok(body.slice(FRAME_HEADER..end)),
    }
}

/// The message length a frame header announces, checked: flags 0 (1 = compressed, which the
/// gateway does not take; anything else — e.g. gRPC-Web's trailers flag 0x80 — is not a request
/// message), at most `limit` bytes.
fn message_len(header: &[u8], limit: usize) -> Result<usize, Error> {
    let [flags, a, b, c, d] = header else {
        return Err(Error::BadFrame {
            reason: "truncated message header",
        });
    };
    match flags {
        0 => {}
        1 => return Err(Error::Compressed),
        _ => {
            return Err(Error::BadFrame {
                reason: "invalid message flags (only 0, uncompressed, is taken)",
            });
        }
    }
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if len > limit {
        return Err(Error::RequestTooLarge { limit });
    }
    Ok(len)
}

/// Base64 as gRPC-Web text bodies carry it: possibly several padded chunks back to back.
pub(crate) fn decode_base64_chunks(text: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    for chunk in clean.split_inclusive(|&b| b == b'=') {
        // "...==" splits into "...=" and "="; the lone padding belongs to the previous chunk.
        if chunk == b"=" {
            continue;
        }
        let mut chunk = chunk.to_vec();
        while chunk.len() % 4 != 0 {
            chunk.push(b'=');
        }
        BASE64.decode_vec(&chunk, &mut out).map_err(|e| {
            Error::MalformedRequest(format!("gRPC-Web text body is not base64: {e}"))
        })?;
    }
    Ok(out)
}

/// A message in a frame.
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// The gRPC timeout of a request (`grpc-timeout: 1500m`), if it sends a valid one.
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    // ASCII digits only: `u64::from_str` would also take a sign ("+5m").
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The trailers that carry `status` (`grpc-status`, `grpc-message` percent-encoded per the gRPC
/// spec, details).
pub(crate) fn status_trailers(status: &tonic::Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if let Err(e) = status.add_header(&mut trailers) {
        tracing::warn!(error = %e, "status does not fit in headers");
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
    }
    if !status.message().is_empty() {
        // The gRPC spec's encoding: only '%' and bytes outside 0x20..=0x7E are escaped.
        let encoded = utf8_percent_encode(status.message(), GRPC_MESSAGE).to_string();
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            trailers.insert("grpc-message", value);
        }
    }
    trailers
}

/// gRPC-Web trailers: a frame with flag `0x80` holding the trailers as HTTP/1 header lines.
pub(crate) fn web_trailers(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b":");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(FRAME_HEADER + block.len());
    frame.put_u8(0x80);
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.extend_from_slice(&block);
    frame.freeze()
}

/// A gRPC-Web text chunk: base64 of `bytes` (chunks may be concatenated, each padded).
pub(crate) fn web_text(bytes: &[u8]) -> Bytes {
    Bytes::from(BASE64.encode(bytes))
}

/// The headers of a response in `protocol`, with `headers` added.
pub(crate) fn response_head(protocol: Protocol, headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().extend(headers);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, protocol.content_type());
    response
}

/// The response to a unary call: `Ok(Some(message))` with `headers`, `Ok(None)` (no message,
/// status OK), or an error status.
pub(crate) fn respond(
    protocol: Protocol,
    outcome: Result<Option<Bytes>, tonic::Status>,
    headers: HeaderMap,
) -> Response<Body> {
    let (message, status) = match outcome {
        Ok(message) => (message, tonic::Status::ok("")),
        Err(status) => (None, status),
    };
    let trailers = status_trailers(&status);
    let mut response = response_head(protocol, headers);
    match protocol {
        Protocol::Grpc => match message {
            // Trailers-only: the status goes in the headers.
            None => response.headers_mut().extend(trailers),
            Some(message) => {
                *response.body_mut() = Body::new(Unary {
                    data: Some(frame(&message)),
                    trailers: Some(trailers),
                });
            }
        },
        Protocol::Web { text } => {
            if message.is_none() {
                // Browsers read a status in the headers even when the body is cut.
                response.headers_mut().extend(trailers.clone());
            }
            let mut body = BytesMut::new();
            if let Some(message) = message {
                body.extend_from_slice(&frame(&message));
            }
            body.extend_from_slice(&web_trailers(&trailers));
            let body = if text { web_text(&body) } else { body.freeze() };
            *response.body_mut() = Body::new(Unary {
                data: Some(body),
                trailers: None,
            });
        }
    }
    response
}

/// Splits a stream of body bytes into gRPC messages (uncompressed, each at most `limit`
/// bytes).
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    buf: BytesMut,
    limit: usize,
}

impl FrameDecoder {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if the buffer holds one.
    pub(crate) fn next_message(&mut self) -> Result<Option<Bytes>, Error> {
        let Some(header) = self.buf.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let len = message_len(header, self.limit)?;
        if self.buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(FRAME_HEADER + len);
        Ok(Some(frame.split_off(FRAME_HEADER).freeze()))
    }

    /// At the end of the body: bytes of an unfinished message are an error.
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::BadFrame {
                reason: "truncated message",
            })
        }
    }
}

/// A body of at most one data frame and one trailers frame.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // Without trailers the length is known: HTTP/1.1 gets a Content-Length, not chunks.
        match (&self.data, &self.trailers) {
            (Some(data), None) => http_body::SizeHint::with_exact(data.len() as u64),
            (None, None) => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    #[tokio::test]
    async fn frames_are_read_exactly_and_limits_hold() {
        let message = b"\x0a\x02u1";
        let body = Full::new(frame(message));
        let read = read_message(body, Protocol::Grpc, 100).await.unwrap();
        assert_eq!(&read[..], message);

        let err = read_message(Full::new(frame(&[0; 20])), Protocol::Grpc, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RequestTooLarge { limit: 10 }), "{err}");

        let mut compressed = frame(message).to_vec();
        compressed[0] = 1;
        assert!(matches!(
            parse_frame(compressed.into(), 100),
            Err(Error::Compressed)
        ));
        // Any other flags (a gRPC-Web trailers frame, garbage) are no request message, for
        // unary bodies and the streaming deframer alike (found by fuzz target grpc_frame).
        for flags in [0x80, 0x9e, 0x02] {
            let mut odd = frame(message).to_vec();
            odd[0] = flags;
            assert!(matches!(
                parse_frame(odd.clone().into(), 100),
                Err(Error::BadFrame { .. })
            ));
            let mut decoder = FrameDecoder::new(100);
            decoder.push(&odd);
            assert!(matches!(
                decoder.next_message(),
                Err(Error::BadFrame { .. })
            ));
        }
        assert!(matches!(
            parse_frame(Bytes::new(), 100),
            Err(Error::BadFrame {
                reason: "no request message"
            })
        ));
        let two = [frame(message), frame(message)].concat();
        assert!(matches!(
            parse_frame(two.into(), 100),
            Err(Error::BadFrame { .. })
        ));
        let truncated = frame(message).slice(..6);
        assert!(matches!(
            parse_frame(truncated, 100),
            Err(Error::BadFrame {
                reason: "truncated message"
            })
        ));

        // gRPC-Web text: base64, possibly in padded chunks.
        let framed = frame(message);
        let (a, b) = framed.split_at(4);
        let text = format!("{}{}", BASE64.encode(a), BASE64.encode(b));
        let read = read_message(
            Full::new(Bytes::from(text)),
            Protocol::Web { text: true },
            100,
        )
        .await
        .unwrap();
        assert_eq!(&read[..], message);
    }

    #[test]
    fn content_types_and_timeouts() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(Protocol::of(&headers), Some(Protocol::Grpc));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web-text"),
        );
        assert_eq!(Protocol::of(&headers), Some(Protocol::Web { text: true }));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(Protocol::of(&headers), None);

        headers.insert("grpc-timeout", HeaderValue::from_static("1500m"));
        assert_eq!(timeout(&headers), Some(Duration::from_millis(1500)));
        headers.insert("grpc-timeout", HeaderValue::from_static("2S"));
        assert_eq!(timeout(&headers), Some(Duration::from_secs(2)));
        headers.insert("grpc-timeout", HeaderValue::from_static("123456789S"));
        assert_eq!(timeout(&headers), None, "at most 8 digits");
        headers.insert("grpc-timeout", HeaderValue::from_static("5x"));
        assert_eq!(timeout(&headers), None);
        // Digits only, no sign (found by fuzz target grpc_frame).
        headers.insert("grpc-timeout", HeaderValue::from_static("+0m"));
        assert_eq!(timeout(&headers), None);
    }

    #[tokio::test]
    async fn responses_carry_status_in_trailers_or_headers() {
        let ok = respond(
            Protocol::Grpc,
            Ok(Some(Bytes::from_static(b"hi"))),
            HeaderMap::new(),
        );
        assert_eq!(ok.headers()[CONTENT_TYPE], "application/grpc");
        let collected = ok.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], &frame(b"hi")[..]);

        let failed = respond(
            Protocol::Grpc,
            Err(tonic::Status::unknown("boom: 100% ✗")),
            HeaderMap::new(),
        );
        assert_eq!(failed.headers()["grpc-status"], "2");
        // Percent-encoded per the gRPC spec.
        assert_eq!(failed.headers()["grpc-message"], "boom: 100%25 %E2%9C%97");

        let web = respond(
            Protocol::Web { text: false },
            Ok(Some(Bytes::from_static(b"hi"))),
            HeaderMap::new(),
        );
        assert_eq!(web.headers()[CONTENT_TYPE], "application/grpc-web+proto");
        let body = web.into_body().collect().await.unwrap().to_bytes();
        let trailer = b"grpc-status:0\r\n";
        let mut expected = frame(b"hi").to_vec();
        expected.push(0x80);
        expected.extend_from_slice(&(trailer.len() as u32).to_be_bytes());
        expected.extend_from_slice(trailer);
        assert_eq!(&body[..], &expected[..]);
    }
}
