//! The relay against a member scripted byte by byte (the real ggml server is in
//! `tests/split.rs`): what reaches the member, what reaches the worker, what is counted.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::split::cache::fnv1a64;

const WAIT: Duration = Duration::from_secs(10);

struct Ends {
    worker: DuplexStream,
    member: DuplexStream,
    traffic: Arc<Traffic>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn start() -> Ends {
    let (worker, worker_side) = tokio::io::duplex(1 << 20);
    let (member, member_side) = tokio::io::duplex(1 << 20);
    let traffic = Arc::new(Traffic::default());
    let t = Arc::clone(&traffic);
    let task = tokio::spawn(async move { relay(worker_side, member_side, &t, Duration::ZERO).await });
    Ends { worker, member, traffic, task }
}

async fn read_n(from: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, from.read_exact(&mut buf)).await.expect("bytes in time").expect("read");
    buf
}

fn request(cmd: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = wire::encode_request_header(cmd, payload.len() as u64).to_vec();
    out.extend_from_slice(payload);
    out
}

fn answer(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn set_tensor(data: &[u8]) -> Vec<u8> {
    let mut p = vec![0x5a; wire::RPC_TENSOR_BYTES];
    p.push(0);
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(data);
    request(wire::CMD_SET_TENSOR, &p)
}

/// The worker says HELLO; the member answers with protocol `major`; the worker gets the answer.
async fn hello(e: &mut Ends, major: u8) {
    let hello = request(wire::CMD_HELLO, &[0u8; 8]);
    e.worker.write_all(&hello).await.unwrap();
    assert_eq!(read_n(&mut e.member, hello.len()).await, hello);
    let reply = answer(&[major, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.member.write_all(&reply).await.unwrap();
    assert_eq!(read_n(&mut e.worker, reply.len()).await, reply, "HELLO's answer reaches the worker");
}

fn weight() -> Vec<u8> {
    (0..(100u32 << 10)).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_weight_the_member_holds_costs_an_offer_and_its_answer_never_reaches_the_worker() {
    let mut e = start();
    hello(&mut e, PROTO_MAJOR).await;
    e.traffic.begin_load();
    let data = weight();
    e.worker.write_all(&set_tensor(&data)).await.unwrap();
    let offer = read_n(&mut e.member, wire::REQUEST_HEADER + wire::SET_TENSOR_HASH_BYTES).await;
    assert_eq!(offer[0], wire::CMD_SET_TENSOR_HASH);
    assert_eq!(&offer[offer.len() - 8..], &fnv1a64(&data).to_le_bytes());
    // The answer comes in two pieces.
    let found = answer(&[1]);
    e.member.write_all(&found[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    e.member.write_all(&found[5..]).await.unwrap();
    // The worker's next call goes through, and only its answer comes back.
    let get = request(8, &[1u8; 24]);
    e.worker.write_all(&get).await.unwrap();
    assert_eq!(read_n(&mut e.member, get.len()).await, get, "the data was not sent");
    e.member.write_all(&answer(b"abcd")).await.unwrap();
    assert_eq!(read_n(&mut e.worker, 12).await, answer(b"abcd"));
    assert_eq!(e.traffic.weights_cached.load(Ordering::Relaxed), data.len() as u64);
    assert_eq!(e.traffic.weights_sent.load(Ordering::Relaxed), 0);
    assert!(e.traffic.sent.load(Ordering::Relaxed) < 1024, "what went to the member is counted");
    drop(e.worker);
    assert!(tokio::time::timeout(WAIT, e.task).await.expect("the relay ends").unwrap().is_ok());
}

#[tokio::test]
async fn a_weight_the_member_lacks_is_sent_for_it_to_keep() {
    let mut e = start();
    hello(&mut e, PROTO_MAJOR).await;
    e.traffic.begin_load();
    let data = weight();
    let set = set_tensor(&data);
    e.worker.write_all(&set).await.unwrap();
    let _offer = read_n(&mut e.member, wire::REQUEST_HEADER + wire::SET_TENSOR_HASH_BYTES).await;
    e.member.write_all(&answer(&[0])).await.unwrap();
    let sent = read_n(&mut e.member, set.len()).await;
    let mut flagged = set.clone();
    flagged[wire::REQUEST_HEADER + wire::RPC_TENSOR_BYTES] = 1;
    assert!(sent == flagged, "the same SET_TENSOR, with the cache flag set");
    assert_eq!(e.traffic.weights_sent.load(Ordering::Relaxed), data.len() as u64);
    // Once loaded, a SET_TENSOR is carried as it is (activations are not weights).
    e.traffic.end_load();
    e.worker.write_all(&set).await.unwrap();
    assert!(read_n(&mut e.member, set.len()).await == set);
}

#[tokio::test]
async fn a_member_of_another_protocol_version_gets_the_bytes_untouched() {
    let mut e = start();
    hello(&mut e, PROTO_MAJOR + 1).await;
    e.traffic.begin_load();
    let set = set_tensor(&weight());
    e.worker.write_all(&set).await.unwrap();
    assert!(read_n(&mut e.member, set.len()).await == set);
}

#[tokio::test]
async fn a_garbled_answer_to_an_offer_ends_the_connection() {
    let mut e = start();
    hello(&mut e, PROTO_MAJOR).await;
    e.traffic.begin_load();
    e.worker.write_all(&set_tensor(&weight())).await.unwrap();
    let _offer = read_n(&mut e.member, wire::REQUEST_HEADER + wire::SET_TENSOR_HASH_BYTES).await;
    e.member.write_all(&answer(&[0u8; 5000])).await.unwrap();
    let ended = tokio::time::timeout(WAIT, e.task).await.expect("the relay ends").unwrap();
    assert!(ended.is_err(), "{ended:?}");
    // The worker sees its socket close.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, e.worker.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(read.is_ok() && rest.is_empty(), "nothing of the garbled answer reaches the worker");
}

#[tokio::test]
async fn a_member_holding_the_model_is_offered_even_the_smallest_weight() {
    let mut e = start();
    hello(&mut e, PROTO_MAJOR).await;
    e.traffic.begin_load();
    let norm = vec![7u8; 2304];
    let set = set_tensor(&norm);
    // Not worth an offer to a member without the model: sent as it is.
    e.worker.write_all(&set).await.unwrap();
    assert!(read_n(&mut e.member, set.len()).await == set);
    // To one holding it: offered.
    e.traffic.offer_all(true);
    e.worker.write_all(&set).await.unwrap();
    let offer = read_n(&mut e.member, wire::REQUEST_HEADER + wire::SET_TENSOR_HASH_BYTES).await;
    assert_eq!(&offer[offer.len() - 8..], &fnv1a64(&norm).to_le_bytes());
    e.member.write_all(&answer(&[1])).await.unwrap();
    let get = request(8, &[1u8; 24]);
    e.worker.write_all(&get).await.unwrap();
    assert_eq!(read_n(&mut e.member, get.len()).await, get, "the norm itself was not sent");
    assert_eq!(e.traffic.weights_cached.load(Ordering::Relaxed), norm.len() as u64);
}
