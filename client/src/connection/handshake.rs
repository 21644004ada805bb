//! Opening one socket: resolve the address, connect, and the `Hello`/`HelloOk` exchange, with
//! its typed refusals — and the peer that answers with HTTP (the admin port given by mistake).

use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{lookup_host, TcpStream};
use tokio_util::codec::FramedRead;
use weir_protocol::{
    CodecError, ErrorCode, Frame, GoingAway, Hello, ServerLimits, WeirCodec, MIN_PROTOCOL_VERSION,
};

use crate::error::ClientError;
use crate::options::ClientOptions;

/// The read half of a connection: a TCP socket's, or a TLS stream's.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The write half of a connection: a TCP socket's, or a TLS stream's (which may keep bytes
/// until flushed).
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// A socket's two halves.
pub(crate) struct Io {
    pub reader: FramedRead<ReadHalf, WeirCodec>,
    pub writer: WriteHalf,
    /// Bytes were written since the last flush: a TLS stream may still hold some of them.
    pub unflushed: bool,
}

/// Writes what `buf` holds to `writer` (`Some(bytes written)`) or, when it is empty, flushes
/// what the stream may have kept (`None`).
pub(crate) async fn write_or_flush(
    writer: &mut WriteHalf,
    buf: &mut BytesMut,
) -> std::io::Result<Option<usize>> {
    if buf.is_empty() {
        writer.flush().await.map(|()| None)
    } else {
        writer.write_buf(buf).await.map(Some)
    }
}

/// One socket past its handshake.
pub(crate) struct Session {
    pub io: Io,
    /// Encodes with the broker's `max_frame_bytes`.
    pub codec: WeirCodec,
    pub limits: ServerLimits,
    /// The protocol version agreed (v5 speaks batches).
    pub version: u16,
}

/// The first four bytes of an HTTP answer (`HTTP/1.1 ...`), read as a frame length.
const HTTP_AS_LENGTH: usize = u32::from_be_bytes(*b"HTTP") as usize;

/// The error of a connection the broker closed with `GoingAway`.
pub(crate) fn going_away(g: GoingAway) -> ClientError {
    ClientError::GoingAway {
        reason: g.reason,
        message: g.message,
    }
}

fn timed_out(what: &str, after: Duration) -> ClientError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out after {after:?}"),
    )
    .into()
}

/// Resolves `addr` (`host:port`), connects to the first address that accepts, and performs the
/// `Hello` handshake, each step within its timeout of `opts`.
pub(crate) async fn connect(addr: &str, opts: &ClientOptions) -> Result<Session, ClientError> {
    let addrs: Vec<_> = tokio::time::timeout(opts.connect_timeout, lookup_host(addr))
        .await
        .map_err(|_| timed_out("resolving", opts.connect_timeout))??
        .collect();
    let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(&addrs[..]))
        .await
        .map_err(|_| timed_out("connect", opts.connect_timeout))??;
    stream.set_nodelay(true)?;
    let (read, mut write): (ReadHalf, WriteHalf) = match &opts.tls {
        None => {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(tls) => {
            let handshake = crate::tls::connect(tls, addr, stream);
            let stream = tokio::time::timeout(opts.handshake_timeout, handshake)
                .await
                .map_err(|_| timed_out("TLS handshake", opts.handshake_timeout))??;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        }
    };
    let mut reader = FramedRead::new(read, WeirCodec::new(opts.max_frame_bytes));
    let mut wbuf = BytesMut::new();
    WeirCodec::default().encode_frame(
        &Frame::Hello(Hello {
            version: opts.protocol_version,
            token: opts.token.clone(),
        }),
        &mut wbuf,
    )?;
    write.write_all(&wbuf).await?;
    write.flush().await?;

    let answer = tokio::time::timeout(opts.handshake_timeout, reader.next())
        .await
        .map_err(|_| {
            ClientError::Handshake(format!(
                "no answer to Hello within {:?}",
                opts.handshake_timeout
            ))
        })?;
    let (limits, version) = match (&opts.tls, answer) {
        // With TLS 1.3 the broker checks a client certificate after the client's side of the
        // handshake is done: its refusal arrives as an alert instead of the answer.
        (Some(tls), Some(Err(CodecError::Io(e)))) => {
            return Err(crate::tls::describe(tls, addr, e));
        }
        (None, None) => {
            return Err(ClientError::Handshake(
                "broker closed the connection during the handshake (a broker with [tls] closes plaintext connections: connect with TLS, e.g. `weir --tls-ca FILE`, ClientOptions::tls)".into(),
            ))
        }
        (_, answer) => hello_answer(addr, opts.protocol_version, answer)?,
    };
    let read_max = opts.max_frame_bytes.max(limits.max_frame_bytes as usize);
    let mut read_codec = WeirCodec::new(read_max);
    read_codec.set_version(version);
    *reader.decoder_mut() = read_codec;
    let mut codec = WeirCodec::new(limits.max_frame_bytes as usize);
    codec.set_version(version);
    Ok(Session {
        io: Io {
            reader,
            writer: write,
            unflushed: false,
        },
        codec,
        limits,
        version,
    })
}

/// The broker's limits and the version it speaks from its answer to a `Hello` of `asked`, or
/// the typed refusal.
fn hello_answer(
    addr: &str,
    asked: u16,
    answer: Option<Result<Frame, CodecError>>,
) -> Result<(ServerLimits, u16), ClientError> {
    match answer {
        None => Err(ClientError::Handshake(
            "broker closed the connection during the handshake".into(),
        )),
        Some(Err(CodecError::FrameTooLarge { len, .. })) if len == HTTP_AS_LENGTH => {
            Err(ClientError::HttpPeer {
                addr: addr.to_owned(),
            })
        }
        Some(Err(e)) => Err(e.into()),
        Some(Ok(Frame::HelloOk(ok))) => {
            if !(MIN_PROTOCOL_VERSION..=asked).contains(&ok.version) {
                return Err(ClientError::UnsupportedVersion(format!(
                    "broker answered with protocol version {}, this client speaks {MIN_PROTOCOL_VERSION} to {asked}",
                    ok.version
                )));
            }
            Ok((ok.limits, ok.version))
        }
        Some(Ok(Frame::Error(e))) => Err(match e.code {
            ErrorCode::Unauthorized => ClientError::Unauthorized(e.message),
            ErrorCode::UnsupportedVersion => ClientError::UnsupportedVersion(e.message),
            code => ClientError::Broker {
                code,
                message: e.message,
            },
        }),
        Some(Ok(Frame::Rejected(r))) => Err(ClientError::ConnectionRejected {
            reason: r.reason,
            limit: r.limit,
            retry_after_ms: r.retry_after_ms,
        }),
        Some(Ok(Frame::GoingAway(g))) => Err(going_away(g)),
        Some(Ok(other)) => Err(ClientError::Handshake(format!(
            "expected HelloOk, got {}",
            other.name()
        ))),
    }
}

/// Whether a failed connect may succeed if tried again later: the broker is not there yet
/// (i/o), full (`ConnectionRejected`), shutting down or starting (`GoingAway`, a handshake cut
/// short). Not a refused token, another protocol version, an HTTP peer or broken frames.
pub(crate) fn worth_retrying(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io(_)
            | ClientError::ConnectionLost
            | ClientError::ConnectionRejected { .. }
            | ClientError::GoingAway { .. }
            | ClientError::Handshake(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_answer_is_named_as_such() {
        let too_large = CodecError::FrameTooLarge {
            len: HTTP_AS_LENGTH,
            max: 4 << 20,
        };
        let e = hello_answer("127.0.0.1:7071", 5, Some(Err(too_large))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "127.0.0.1:7071 answered with HTTP — is that the admin port? The wire port is 7070 by default"
        );
        assert_eq!(HTTP_AS_LENGTH, 1_213_486_160);
        let other = CodecError::FrameTooLarge {
            len: 5 << 20,
            max: 4 << 20,
        };
        assert!(matches!(
            hello_answer("x:1", 5, Some(Err(other))),
            Err(ClientError::Codec(_))
        ));
        assert!(!worth_retrying(&e));
    }
}
