//! A small MLLP client: send a message, wait for the frame that answers it.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::codec::{FrameError, MllpCodec, frame};
use crate::tls::ClientStream;

/// Why a send or receive failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    // `cause`, not `source`: the message already names it, and a chain printer (`{:#}`)
    // would print it twice.
    #[error("cannot connect to {addr}: {cause}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// No answer in time.
    #[error("no ACK within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr} failed: {cause}")]
    Handshake {
        /// The address.
        addr: String,
        /// The cause (an untrusted or mismatched certificate, a refused client certificate …).
        cause: std::io::Error,
    },
    /// The peer closed the connection.
    #[error("the server closed the connection without an ACK")]
    Closed,
    /// Framing or socket failure.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One MLLP connection.
#[derive(Debug)]
pub struct MllpClient {
    stream: ClientStream,
    codec: MllpCodec,
    buffer: BytesMut,
}

impl MllpClient {
    /// Connect to `addr` (`host:port`) within `timeout`. ACK frames are accepted up to
    /// `max_frame_size` bytes.
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        max_frame_size: usize,
    ) -> Result<Self, ClientError> {
        Self::connect_with(addr, None, timeout, max_frame_size).await
    }

    /// Connect to `addr`, over TLS when `tls` is given; the TCP connection and the handshake
    /// each have `timeout`.
    pub async fn connect_with(
        addr: &str,
        tls: Option<&crate::tls::TlsClient>,
        timeout: Duration,
        max_frame_size: usize,
    ) -> Result<Self, ClientError> {
        Self::connect_to(addr, None, tls, timeout, max_frame_size).await
    }

    /// [`Self::connect_with`], to `resolved` addresses when given (already checked against
    /// `EGRESS_ALLOW`) instead of resolving `addr` again; `addr` still names the peer in
    /// errors.
    pub async fn connect_to(
        addr: &str,
        resolved: Option<&[std::net::SocketAddr]>,
        tls: Option<&crate::tls::TlsClient>,
        timeout: Duration,
        max_frame_size: usize,
    ) -> Result<Self, ClientError> {
        let stream = connect_stream(addr, resolved, tls, timeout).await?;
        Ok(Self {
            stream,
            codec: MllpCodec::new(max_frame_size),
            buffer: BytesMut::with_capacity(4096),
        })
    }

    /// False when the connection cannot carry another exchange: the peer closed it (many
    /// engines close idle connections), or sent bytes nobody asked for (a late ACK). Checked
    /// without waiting before a kept connection is used again.
    pub fn is_reusable(&mut self) -> bool {
        // A trailing `\r` after an end block is normal; anything else is not.
        if !self.buffer.iter().all(u8::is_ascii_whitespace) {
            return false;
        }
        is_quiet(&mut self.stream)
    }

    /// Write one message, MLLP-framed.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(&frame(message))
            .await
            .map_err(FrameError::Io)?;
        // Over TLS, bytes can wait in the session's buffer: push them to the socket before
        // waiting for the answer.
        self.stream.flush().await.map_err(FrameError::Io)?;
        Ok(())
    }

    /// Wait up to `timeout` for the next frame.
    pub async fn receive(&mut self, timeout: Duration) -> Result<Bytes, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buffer)? {
                return Ok(frame);
            }
            self.buffer.reserve(4096);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer))
                .await
                .map_err(|_| ClientError::Timeout(timeout))?
                .map_err(FrameError::Io)?;
            if read == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Send a message and wait for the next frame.
    pub async fn request(
        &mut self,
        message: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        self.send(message).await?;
        self.receive(timeout).await
    }
}

/// Connect to `addr` (or to `resolved`, already checked against `EGRESS_ALLOW`), over TLS
/// when `tls` is given; the TCP connection and the handshake each have `timeout`. Shared by
/// the MLLP client and the DICOM output.
pub async fn connect_stream(
    addr: &str,
    resolved: Option<&[std::net::SocketAddr]>,
    tls: Option<&crate::tls::TlsClient>,
    timeout: Duration,
) -> Result<ClientStream, ClientError> {
    let connect_error = |cause| ClientError::Connect {
        addr: addr.to_owned(),
        cause,
    };
    let connect = async {
        match resolved {
            Some(resolved) => TcpStream::connect(resolved).await,
            None => TcpStream::connect(addr).await,
        }
    };
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(connect_error)?;
    stream.set_nodelay(true).map_err(connect_error)?;
    let stream = match tls {
        None => ClientStream::Plain(stream),
        Some(tls) => {
            let handshake_error = |cause| ClientError::Handshake {
                addr: addr.to_owned(),
                cause,
            };
            let stream = tokio::time::timeout(timeout, tls.connect(stream))
                .await
                .map_err(|_| {
                    handshake_error(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no handshake within the connect timeout",
                    ))
                })?
                .map_err(handshake_error)?;
            ClientStream::Tls(Box::new(stream))
        }
    };
    Ok(stream)
}

/// Whether a kept connection is open and silent: one read that does not wait. Over TLS this
/// also takes in what is not data (a session ticket, a close_notify), so it is a read of the
/// stream, not of the socket. Ready means closed by the peer (nothing read), unsolicited
/// bytes, or an error: the connection must not be used again.
pub fn is_quiet(stream: &mut ClientStream) -> bool {
    let mut probe = [0u8; 64];
    let mut probe = ReadBuf::new(&mut probe);
    let mut context = Context::from_waker(std::task::Waker::noop());
    Pin::new(stream)
        .poll_read(&mut context, &mut probe)
        .is_pending()
}

/// Acknowledge the next segments at once (TCP_QUICKACK, Linux), before waiting for an
/// answer: a peer that writes its answer in two pieces with Nagle's algorithm on would
/// otherwise wait for a delayed ACK, 40 ms per exchange. Linux turns it off again by itself.
pub fn quickack(stream: &ClientStream) {
    let socket = match stream {
        ClientStream::Plain(stream) => stream,
        ClientStream::Tls(stream) => stream.get_ref().0,
    };
    let _ = socket2::SockRef::from(socket).set_tcp_quickack(true);
}
