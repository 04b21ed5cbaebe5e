//! Unit tests of `frame.rs`.

use super::*;
use crate::{ClaimAck, TokenChunk};
use futures::executor::block_on;
use futures::io::Cursor;

#[test]
fn round_trip_limits_and_garbage() {
    block_on(async {
        let msg = TokenChunk { text: "héllo".repeat(100), tokens: 3, ..Default::default() };
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, &msg).await.unwrap();
        write_frame(&mut buf, &ClaimAck { chosen: true }).await.unwrap();
        let bytes = buf.into_inner();

        let mut r = Cursor::new(bytes.clone());
        let got: TokenChunk = read_frame(&mut r, 4096).await.unwrap();
        assert_eq!(got, msg);
        let ack: ClaimAck = read_frame(&mut r, 16).await.unwrap();
        assert!(ack.chosen);
        assert!(matches!(read_frame::<_, ClaimAck>(&mut r, 16).await, Err(FrameError::Closed)));

        // Over the limit: refused before reading the body.
        let mut r = Cursor::new(bytes.clone());
        assert!(matches!(read_frame::<_, TokenChunk>(&mut r, 10).await, Err(FrameError::TooLarge { .. })));
        // Truncated body, endless length prefix, garbage body.
        let mut r = Cursor::new(bytes[..20].to_vec());
        assert!(read_frame::<_, TokenChunk>(&mut r, 4096).await.is_err());
        let mut r = Cursor::new(vec![0xff; 20]);
        assert!(matches!(read_frame::<_, TokenChunk>(&mut r, 4096).await, Err(FrameError::BadLength)));
        let mut r = Cursor::new(vec![4, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(read_frame::<_, TokenChunk>(&mut r, 4096).await, Err(FrameError::Decode(_))));
    });
}
