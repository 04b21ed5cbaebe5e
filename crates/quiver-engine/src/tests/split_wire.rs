use super::*;

/// A SET_TENSOR payload: a tensor whose serialized bytes are all `fill`, then flag, offset, data.
fn set_tensor(fill: u8, flag: u8, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut p = vec![fill; RPC_TENSOR_BYTES];
    p.push(flag);
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(data);
    p
}

#[test]
fn the_serialized_tensor_has_the_packed_size_of_ggmls_rpc_tensor() {
    // id, type, buffer, ne[4], nb[4], op, op_params[16], flags, src[10], view_src, view_offs,
    // data, name[64], use_count: packed.
    let fields = [8, 4, 8, 4 * 4, 4 * 4, 4, 16 * 4, 4, 10 * 8, 8, 8, 8, 64, 4];
    assert_eq!(fields.iter().sum::<usize>(), RPC_TENSOR_BYTES);
    assert_eq!(RPC_TENSOR_BYTES % 8, 0);
}

#[test]
fn headers_round_trip() {
    let h = encode_request_header(CMD_SET_TENSOR, 0x0102_0304_0506);
    assert_eq!(request_header(&h), (CMD_SET_TENSOR, 0x0102_0304_0506));
    assert_eq!(h[1], 0x06, "little-endian size");
    assert_eq!(response_size(&[1, 0, 0, 0, 0, 0, 0]), None, "an incomplete header");
    assert_eq!(response_size(&[1, 0, 0, 0, 0, 0, 0, 0, 9]), Some(1));
}

#[test]
fn a_set_tensor_becomes_an_offer_of_its_hash() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let payload = set_tensor(0xab, 0, 4096, &data);
    let set = parse_set_tensor(&payload).unwrap();
    assert_eq!((set.cache_flag, set.offset, set.data), (0, 4096, &data[..]));
    assert!(set.tensor.iter().all(|&b| b == 0xab) && set.tensor.len() == RPC_TENSOR_BYTES);

    let offer = hash_request(&set);
    assert_eq!(offer.len(), REQUEST_HEADER + SET_TENSOR_HASH_BYTES);
    let head: [u8; REQUEST_HEADER] = offer[..REQUEST_HEADER].try_into().unwrap();
    assert_eq!(request_header(&head), (CMD_SET_TENSOR_HASH, SET_TENSOR_HASH_BYTES as u64));
    let body = &offer[REQUEST_HEADER..];
    assert_eq!(&body[..RPC_TENSOR_BYTES], set.tensor, "the same tensor");
    assert_eq!(&body[RPC_TENSOR_BYTES..RPC_TENSOR_BYTES + 8], &4096u64.to_le_bytes(), "the same offset");
    assert_eq!(&body[RPC_TENSOR_BYTES + 8..], &fnv1a64(&data).to_le_bytes(), "the data's FNV-1a");

    let mut flagged = payload.clone();
    set_cache_flag(&mut flagged);
    assert_eq!(parse_set_tensor(&flagged).unwrap().cache_flag, 1);
    assert_eq!(parse_set_tensor(&flagged).unwrap().data, &data[..], "nothing else changes");
    assert!(parse_set_tensor(&payload[..SET_TENSOR_PREFIX - 1]).is_none());
    assert_eq!(parse_set_tensor(&payload[..SET_TENSOR_PREFIX]).unwrap().data.len(), 0);
}

#[test]
fn a_hash_offer_names_its_tensors_size() {
    let mut payload = vec![0u8; SET_TENSOR_HASH_BYTES];
    // ne[3] = 3 at 20 + 12, nb[3] = 1000 at 36 + 12.
    payload[32..36].copy_from_slice(&3u32.to_le_bytes());
    payload[48..52].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(hashed_tensor_bytes(&payload), Some(3000));
    assert_eq!(hashed_tensor_bytes(&payload[..10]), None);
}

#[test]
fn answers_are_read_by_their_shape() {
    assert_eq!(hash_found(&[1, 0, 0, 0, 0, 0, 0, 0, 1]), Some(true));
    assert_eq!(hash_found(&[1, 0, 0, 0, 0, 0, 0, 0, 0]), Some(false));
    assert_eq!(hash_found(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 1]), None, "not an answer to an offer");
    assert_eq!(hello_major(&[4, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0]), Some(7));
    assert_eq!(hello_major(&[0, 0, 0, 0, 0, 0, 0, 0]), None);
}

#[test]
fn a_hello_offers_no_transport_upgrade() {
    let hello = hello_request();
    let head: [u8; REQUEST_HEADER] = hello[..REQUEST_HEADER].try_into().unwrap();
    assert_eq!(request_header(&head), (CMD_HELLO, HELLO_REQUEST_BYTES as u64));
    assert_eq!(hello.len(), REQUEST_HEADER + HELLO_REQUEST_BYTES);
    assert!(hello[REQUEST_HEADER..].iter().all(|&b| b == 0), "no capabilities offered");
}
