//! Unit tests of `bootstrap.rs`.

use super::*;

#[test]
fn forms_users_write() {
    let p = PeerId::random();
    let b: BootstrapAddr = format!("/ip4/1.2.3.4/tcp/4001/p2p/{p}").parse().unwrap();
    assert_eq!(b.addr.to_string(), "/ip4/1.2.3.4/tcp/4001");
    assert_eq!(b.peer_id, Some(p));

    let b: BootstrapAddr = "your-server.com:4001".parse().unwrap();
    assert_eq!(b.addr.to_string(), "/dns/your-server.com/tcp/4001");
    assert_eq!(b.peer_id, None);

    let b: BootstrapAddr = "127.0.0.1:4001".parse().unwrap();
    assert_eq!(b.addr.to_string(), "/ip4/127.0.0.1/tcp/4001");
    let b: BootstrapAddr = "[::1]:4001".parse().unwrap();
    assert_eq!(b.addr.to_string(), "/ip6/::1/tcp/4001");

    let b: BootstrapAddr = "/dns4/example.org/udp/4001/quic-v1".parse().unwrap();
    assert_eq!(b.peer_id, None);
    assert_eq!(b.to_string(), "/dns4/example.org/udp/4001/quic-v1");
}

#[test]
fn bad_forms_are_errors() {
    for bad in [
        "",
        "/ip4/1.2.3.4",
        "/ip4/999.1.1.1/tcp/1",
        "host",
        "host:port",
        "host:0",
        "host:70000",
        ":4001",
        "/p2p/garbage",
    ] {
        assert!(bad.parse::<BootstrapAddr>().is_err(), "{bad:?} parsed");
    }
}
