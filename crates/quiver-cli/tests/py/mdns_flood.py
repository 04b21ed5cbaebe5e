#!/usr/bin/env python3
"""Sends mDNS answers naming many fake libp2p peers to 224.0.0.251:5353, as anyone on a LAN can.

For crates/quiver-cli/tests/lan.rs only, inside the test's own network namespaces (never on a
real network). Each answer is laid out as libp2p-mdns lays out its own (a PTR record
`_p2p._udp.local` -> `<label>`, then a TXT record `<label>` holding `dnsaddr=<multiaddr>/p2p/<id>`),
with random Ed25519 PeerIds; every tenth peer has an unusable address (TCP port 0), the rest a
TCP port on this host where nothing listens. Prints one JSON line: what was sent.

Usage: mdns_flood.py --source IP [--peers N] [--per-packet K] [--rounds R] [--seed S]
"""

import argparse
import json
import random
import socket
import struct
import time

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
SERVICE = [b"_p2p", b"_udp", b"local"]
TTL = 3600


def b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def fake_peer_id(rng: random.Random) -> str:
    # Identity multihash (0x00, 36 bytes) of a protobuf PublicKey {Type: Ed25519, Data: 32 bytes}.
    key = bytes(rng.getrandbits(8) for _ in range(32))
    return b58(bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + key)


def qname(labels) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def packet(peers) -> bytes:
    """An mDNS response: one PTR answer and one TXT additional per (label, txt) of `peers`."""
    answers, additionals = b"", b""
    for label, txt in peers:
        name = qname([label])
        answers += qname(SERVICE) + struct.pack(">HHIH", 12, 1, TTL, len(name)) + name
        data = bytes([len(txt)]) + txt
        additionals += name + struct.pack(">HHIH", 16, 0x8001, TTL, len(data)) + data
    header = struct.pack(">HHHHHH", 0, 0x8400, 0, len(peers), 0, len(peers))
    return header + answers + additionals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True, help="this host's address (the interface to send on)")
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--per-packet", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    peers = []
    for i in range(a.peers):
        pid = fake_peer_id(rng)
        port = 0 if i % 10 == 9 else rng.randrange(20000, 60000)
        label = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32)).encode()
        peers.append((label, f"dnsaddr=/ip4/{a.source}/tcp/{port}/p2p/{pid}".encode()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(a.source))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sent = 0
    for _ in range(a.rounds):
        for i in range(0, len(peers), a.per_packet):
            sock.sendto(packet(peers[i : i + a.per_packet]), ("224.0.0.251", 5353))
            sent += 1
            # Paced a little, so the receiver's socket buffer is not what bounds the flood.
            time.sleep(0.002)
    print(json.dumps({"packets": sent, "peers": a.peers, "unusable": a.peers // 10, "rounds": a.rounds}))


if __name__ == "__main__":
    main()
