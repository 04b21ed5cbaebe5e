//! Length-prefixed protobuf frames on a byte stream: an unsigned LEB128 length, then the
//! message. The reader refuses a length above its limit before reading the body.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("malformed length prefix")]
    BadLength,
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Writes `msg` as one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &impl Message) -> Result<(), FrameError> {
    let body = msg.encode_to_vec();
    let mut len = body.len() as u64;
    let mut prefix = Vec::with_capacity(10);
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            prefix.push(byte);
            break;
        }
        prefix.push(byte | 0x80);
    }
    w.write_all(&prefix).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes and decodes it. [`FrameError::Closed`] when the
/// stream ends cleanly before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin, M: Message + Default>(r: &mut R, max: usize) -> Result<M, FrameError> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        match r.read(&mut b).await? {
            0 if i == 0 => return Err(FrameError::Closed),
            0 => return Err(FrameError::BadLength),
            _ => {}
        }
        // The tenth byte holds only bit 63: anything more is a length beyond u64, which must not
        // wrap around to a small one.
        if i == 9 && b[0] > 1 {
            return Err(FrameError::BadLength);
        }
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            if len > max as u64 {
                return Err(FrameError::TooLarge { len, max });
            }
            let mut body = vec![0u8; len as usize];
            r.read_exact(&mut body).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FrameError::Closed,
                _ => FrameError::Io(e),
            })?;
            return Ok(M::decode(body.as_slice())?);
        }
    }
    Err(FrameError::BadLength)
}

#[cfg(test)]
#[path = "tests/frame.rs"]
mod tests;
