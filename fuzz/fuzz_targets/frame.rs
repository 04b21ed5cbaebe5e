//! The frame reader of every stream protocol (`/quiver/infer/1`, `/quiver/claim/1`): input byte
//! 0 picks the message type and limit (see `FrameKind`), the rest is what the peer sent. Every
//! frame read must consume bytes, decoded messages are validated as the node does, and a
//! decoded message must encode back to bytes that decode to the same encoding.
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use quiver_fuzz_seeds::FrameKind;
use quiver_proto::{Claim, ClaimAck, InferRequest, InferResponse, SignedRecord, read_frame, write_frame};

fn read_all<M: Message + Default>(stream: &[u8], max: usize, check: impl Fn(&M)) {
    let mut r = Cursor::new(stream);
    loop {
        let before = r.position();
        let Ok(msg) = block_on(read_frame::<_, M>(&mut r, max)) else { break };
        assert!(r.position() > before, "a frame was read without consuming bytes");
        check(&msg);
        // Re-framing what was read gives a frame that reads back to the same encoding.
        let mut w = Cursor::new(Vec::new());
        block_on(write_frame(&mut w, &msg)).expect("write to memory");
        let again: M = block_on(read_frame(&mut Cursor::new(w.into_inner()), usize::MAX)).expect("re-read");
        assert_eq!(again.encode_to_vec(), msg.encode_to_vec());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, stream)) = data.split_first() else { return };
    let kind = FrameKind::from_byte(kind);
    let max = kind.limit();
    match kind {
        FrameKind::Request => read_all::<InferRequest>(stream, max, |m| {
            if m.validate().is_ok() {
                let _ = m.input.as_ref().map(|i| i.hash());
            }
        }),
        FrameKind::Response => read_all::<InferResponse>(stream, max, |_| {}),
        FrameKind::Claim => read_all::<Claim>(stream, max, |m| {
            let _ = m.validate();
        }),
        FrameKind::ClaimAck => read_all::<ClaimAck>(stream, max, |_| {}),
        FrameKind::SmallRecord => read_all::<SignedRecord>(stream, max, |m| assert!(m.encoded_len() <= max)),
    }
});
