//! A small MLLP client: send a message, wait for the frame that answers it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::codec::{FrameError, MllpCodec, frame};

/// Why a send or receive failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("no ACK within {0:?}")]
    Timeout(Duration),
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
    stream: TcpStream,
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
        let connect_error = |source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(Self {
            stream,
            codec: MllpCodec::new(max_frame_size),
            buffer: BytesMut::with_capacity(4096),
        })
    }

    /// False when the connection cannot carry another exchange: the peer closed it (many
    /// engines close idle connections), or sent bytes nobody asked for (a late ACK). Checked
    /// without waiting before a kept connection is used again.
    pub fn is_reusable(&self) -> bool {
        // A trailing `\r` after an end block is normal; anything else is not.
        if !self.buffer.iter().all(u8::is_ascii_whitespace) {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(error) => error.kind() == std::io::ErrorKind::WouldBlock,
            // 0: closed by the peer; more: unsolicited bytes.
            Ok(_) => false,
        }
    }

    /// Write one message, MLLP-framed.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(&frame(message))
            .await
            .map_err(FrameError::Io)?;
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
