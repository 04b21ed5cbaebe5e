//! The real binaries as separate processes with the command lines users were promised:
//! a bootstrap node and four nodes see each other; the bootstrap dies and the rest carry on;
//! a newcomer joins through a surviving node and finds them all.

use std::time::Duration;

use crate::support;
use support::{NodeProc, eventually, sees_all};

const NODE: &str = env!("CARGO_BIN_EXE_quiver-node");
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");

#[test]
fn no_single_point_of_failure() {
    let _machine = support::light();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    // quiver-node --bootstrap-node --port 4001 (port 0 here: tests never bind fixed ports)
    let mut boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], d);
    let boot_ma = boot.tcp_addr.clone();
    let boot_hostport = format!("127.0.0.1:{}", boot.tcp_port);
    // quiver-node --bootstrap /ip4/…/tcp/…/p2p/<PeerId>, and the host:port form.
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|i| NodeProc::start(NODE, &format!("n{i}"), &["--bootstrap", &boot_ma, "--port", "0"], d))
        .collect();
    nodes.push(NodeProc::start(NODE, "n4", &["--bootstrap", &boot_hostport, "--port", "0"], d));

    let mut all: Vec<String> = nodes.iter().map(|n| n.peer_id.clone()).collect();
    all.push(boot.peer_id.clone());
    let ids: Vec<&str> = all.iter().map(String::as_str).collect();
    let took = eventually(Duration::from_secs(90), "all five see each other", || {
        sees_all(&boot, &ids) && nodes.iter().all(|n| sees_all(n, &ids))
    });
    println!("5 processes see each other after {took:?}");

    // `quiver status --json` reads the same view through the control API.
    let out = std::process::Command::new(QUIVER)
        .args(["status", "--json", "--api", &nodes[0].api.to_string()])
        .output()
        .expect("quiver status runs");
    assert!(out.status.success(), "quiver status failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("quiver status --json prints JSON");
    assert_eq!(v["peer_id"], nodes[0].peer_id.as_str());
    let human = std::process::Command::new(QUIVER)
        .args(["status", "--api", &nodes[0].api.to_string()])
        .output()
        .expect("quiver status runs");
    assert!(String::from_utf8_lossy(&human.stdout).contains(&nodes[0].peer_id));

    // Kill the bootstrap node: the four others still see each other (fresh heartbeats).
    boot.kill();
    let survivors: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
    eventually(Duration::from_secs(60), "survivors still see each other", || {
        nodes.iter().all(|n| sees_all(n, &survivors))
    });

    // A sixth node joins through one of them (not the bootstrap) and finds all four.
    let via = nodes[1].tcp_addr.clone();
    let sixth = NodeProc::start(NODE, "n6", &["--bootstrap", &via, "--port", "0"], d);
    let took =
        eventually(Duration::from_secs(90), "the newcomer finds every survivor", || sees_all(&sixth, &survivors));
    println!("newcomer found all survivors after {took:?}");
    let n6 = sixth.peer_id.clone();
    let mut with_sixth = survivors.clone();
    with_sixth.push(&n6);
    eventually(Duration::from_secs(60), "every survivor hears the newcomer", || {
        nodes.iter().all(|n| sees_all(n, &with_sixth))
    });

    // Graceful shutdown on SIGTERM.
    let mut last = nodes.pop().expect("four nodes");
    let status = last.terminate(Duration::from_secs(15)).expect("node exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn restart_keeps_peer_id_and_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let _machine = support::light();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = NodeProc::start(NODE, "n", &["--port", "0"], dir.path());
    let first = a.peer_id.clone();
    a.terminate(Duration::from_secs(15)).expect("exits on SIGTERM");
    let key = dir.path().join("n/identity.key");
    let mode = std::fs::metadata(&key).expect("key file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let b = NodeProc::start(NODE, "n", &["--port", "0"], dir.path());
    assert_eq!(b.peer_id, first);

    // A key file others can read is refused with a clear message, and not replaced.
    drop(b);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let before = std::fs::read(&key).expect("read key");
    let out = std::process::Command::new(NODE)
        .args(["--port", "0", "--listen-ip", "127.0.0.1", "--api", "off", "--data-dir"])
        .arg(dir.path().join("n"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&key).expect("read key"), before);
}

#[test]
fn every_command_has_help() {
    let _machine = support::light();
    let provider = env!("CARGO_BIN_EXE_quiver-provider");
    for (bin, args) in [
        (NODE, vec!["--help"]),
        (provider, vec!["--help"]),
        (provider, vec!["start", "--help"]),
        (QUIVER, vec!["--help"]),
        (QUIVER, vec!["node", "--help"]),
        (QUIVER, vec!["provider", "--help"]),
        (QUIVER, vec!["provider", "start", "--help"]),
        (QUIVER, vec!["ask", "--help"]),
        (QUIVER, vec!["gateway", "--help"]),
        (QUIVER, vec!["model", "fetch", "--help"]),
        (QUIVER, vec!["model", "list", "--help"]),
        (QUIVER, vec!["status", "--help"]),
        (QUIVER, vec!["peers", "--help"]),
    ] {
        let out = std::process::Command::new(bin).args(&args).output().expect("runs");
        assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{bin} {args:?}");
    }
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let _machine = support::light();
    for (args, flag) in [
        (vec!["--bootstrap", "not-an-address"], "--bootstrap"),
        (vec!["--bootstrap", "/ip4/1.2.3.4/tcp/notaport"], "--bootstrap"),
        (vec!["--bootstrap", "host:99999"], "--bootstrap"),
        (vec!["--port", "70000"], "--port"),
        (vec!["--api", "nowhere"], "--api"),
        (vec!["--listen-addr", "/not/a/multiaddr"], "--listen-addr"),
    ] {
        let out = std::process::Command::new(NODE).args(&args).output().expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "prot = 4001\n").expect("write config");
    let out = std::process::Command::new(NODE).arg("--config").arg(&cfg).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prot"));
}

#[test]
fn flags_win_over_environment_which_wins_over_the_config_file() {
    let _machine = support::light();
    let dir = tempfile::tempdir().expect("tempdir");
    let boot = NodeProc::start(NODE, "boot", &["--bootstrap-node", "--port", "0"], dir.path());
    let real = format!("127.0.0.1:{}", boot.tcp_port);
    // Listeners no node may ever dial: a connection to one means a bootstrap list that should
    // have lost was used (or merged with the winner).
    let trap = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
        (listener, addr)
    };
    let (env_trap, env_trap_addr) = trap();
    let (file_trap, file_trap_addr) = trap();
    // The file names a trap and slow heartbeats (NodeProc's flag asks for 1 s ones).
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, format!("bootstrap = [\"{file_trap_addr}\"]\nheartbeat_interval_secs = 30\n"))
        .expect("write config");
    let cfg = cfg.to_str().expect("utf-8");
    // The flag names the real bootstrap node and the environment a trap: the flag wins.
    let flagged = NodeProc::start_with_env(
        NODE,
        "flagged",
        &["--config", cfg, "--port", "0", "--bootstrap", real.as_str()],
        &[("QUIVER_BOOTSTRAP", env_trap_addr.as_str())],
        dir.path(),
    );
    // No flag: the environment names the real bootstrap node and wins over the file's trap.
    let from_env = NodeProc::start_with_env(
        NODE,
        "from-env",
        &["--config", cfg, "--port", "0"],
        &[("QUIVER_BOOTSTRAP", real.as_str())],
        dir.path(),
    );
    let ids = [boot.peer_id.as_str(), flagged.peer_id.as_str(), from_env.peer_id.as_str()];
    eventually(Duration::from_secs(60), "both nodes joined", || {
        [&boot, &flagged, &from_env].iter().all(|n| sees_all(n, &ids))
    });
    // With the file's 30 s period, the bootstrap would hear nothing new for half a minute; with
    // the flag's 1 s, its view of the nodes stays fresh (heard within 3 s).
    std::thread::sleep(Duration::from_secs(5));
    eventually(Duration::from_secs(10), "heartbeats follow the flag's period", || sees_all(&boot, &ids));
    // Every bootstrap address is dialed at start: by now a losing one would have been.
    let traps = [
        (&env_trap, "the environment's bootstrap peer (a flag named another)"),
        (&file_trap, "the file's bootstrap peer (a flag or the environment named another)"),
    ];
    for (listener, what) in traps {
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((_, from)) => panic!("{what} was dialed (from {from}), though it lost"),
            Err(e) => panic!("accept on the trap for {what}: {e}"),
        }
    }
}
