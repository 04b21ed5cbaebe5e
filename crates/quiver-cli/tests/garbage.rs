//! Garbage and floods on a node's TCP and UDP ports: the node keeps running and keeps its peers.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::support;
use support::{NodeProc, eventually, sees_all};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn junk(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn garbage_and_floods_leave_the_node_serving() {
    let _machine = support::heavy();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut target = NodeProc::start(NODE, "target", &["--bootstrap-node", "--port", "0"], dir.path());
    let peer = NodeProc::start(NODE, "peer", &["--bootstrap", &target.tcp_addr, "--port", "0"], dir.path());
    let (target_id, peer_id) = (target.peer_id.clone(), peer.peer_id.clone());
    let ids = [target_id.as_str(), peer_id.as_str()];
    eventually(Duration::from_secs(60), "the two nodes see each other", || {
        sees_all(&target, &ids) && sees_all(&peer, &ids)
    });

    let tcp = ("127.0.0.1", target.tcp_port);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;

    // 1. Random bytes on fresh TCP connections, including a multistream-select look-alike.
    for i in 0..100 {
        if let Ok(mut s) = TcpStream::connect(tcp) {
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let mut bytes = if i % 10 == 0 {
                b"\x13/multistream/1.0.0\n\x20/not/a/protocol/at/all/0.0.1\n".to_vec()
            } else {
                Vec::new()
            };
            bytes.extend(junk(&mut seed, 1 + (i * 37) % 4096));
            let _ = s.write_all(&bytes);
        }
    }
    // 2. One connection pushing 8 MiB of junk.
    if let Ok(mut s) = TcpStream::connect(tcp) {
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        for _ in 0..128 {
            if s.write_all(&junk(&mut seed, 64 * 1024)).is_err() {
                break;
            }
        }
    }
    // 3. A flood of connections held open without a word (more than the pending limit).
    let held: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(tcp).ok()).collect();
    // 4. Junk datagrams on the QUIC port: random, and ones shaped like QUIC long headers.
    if let Some(udp_port) = target.udp_port {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        for i in 0..3000 {
            let mut d = junk(&mut seed, 1 + (i * 13) % 1400);
            if i % 3 == 0 {
                d[0] = 0xc3; // long header, "Initial"
            }
            let _ = sock.send_to(&d, ("127.0.0.1", udp_port));
        }
    }

    assert!(target.is_running(), "the node died under garbage");
    drop(held);
    // It still answers its API and still has its peer, whose heartbeats keep arriving.
    eventually(Duration::from_secs(30), "the node still sees its peer after the garbage", || {
        sees_all(&target, &ids) && sees_all(&peer, &ids)
    });
    let status = target.status().expect("status answers");
    assert!(status["peers"].as_array().is_some_and(|p| p.iter().any(|x| x == peer.peer_id.as_str())));
    assert!(target.is_running());

    // A new node can still join through it.
    let late = NodeProc::start(NODE, "late", &["--bootstrap", &target.tcp_addr, "--port", "0"], dir.path());
    let all = [target_id.as_str(), peer_id.as_str(), late.peer_id.as_str()];
    eventually(Duration::from_secs(60), "a newcomer joins after the flood", || sees_all(&late, &all));
}
