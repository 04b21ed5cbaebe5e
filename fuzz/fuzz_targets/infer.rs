//! Inference frame bodies: InferRequest decode + validate (as the provider does), InferResponse
//! decode, and the receipt inside a response verified as the client does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use quiver_proto::infer::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use quiver_proto::{InferRequest, InferResponse, Receipt, infer_response::Kind};

fuzz_target!(|data: &[u8]| {
    if data.len() <= MAX_REQUEST_BYTES
        && let Ok(req) = InferRequest::decode(data)
        && req.validate().is_ok()
    {
        let input = req.input.as_ref().expect("validated requests have an input");
        let _ = input.hash();
        assert!(req.request_id.len() == 16);
        assert!(req.params.as_ref().is_some_and(|p| (1..=16_384).contains(&p.max_tokens)));
    }
    if data.len() <= MAX_RESPONSE_BYTES
        && let Ok(InferResponse { kind: Some(Kind::Receipt(signed)) }) = InferResponse::decode(data)
        && let Ok(receipt) = Receipt::verify(signed, &quiver_fuzz_seeds::peer())
    {
        assert_eq!(receipt.provider, quiver_fuzz_seeds::peer().to_bytes());
    }
});
