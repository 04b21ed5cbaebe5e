//! Unit tests of `config.rs`.

use super::*;

#[test]
fn parses_all_fields_and_refuses_unknown_ones() {
    let c = FileConfig::parse(
        r#"
        data_dir = "/var/lib/quiver"
        port = 4001
        listen_ip = "127.0.0.1"
        bootstrap = ["example.org:4001"]
        bootstrap_node = true
        api = "127.0.0.1:0"
        quic = false
        heartbeat_interval_secs = 5
        log_format = "json"
        dht_mode = "server"
        upnp = true
        mdns = false
        relay_service = false
        verify_rate = 0.25
        relay_max_reservations = 8
        relay_max_reservations_per_peer = 1
        relay_max_circuits = 4
        relay_max_circuit_secs = 60
        relay_max_circuit_bytes = 65536
        gpu_layers = 20
        "#,
    )
    .unwrap();
    assert_eq!(c.dht_mode.as_deref(), Some("server"));
    assert_eq!(c.verify_rate, Some(0.25));
    assert_eq!((c.upnp, c.relay_service, c.mdns), (Some(true), Some(false), Some(false)));
    assert_eq!((c.relay_max_reservations, c.relay_max_circuit_bytes), (Some(8), Some(65536)));
    assert_eq!(c.port, Some(4001));
    assert_eq!(c.bootstrap.as_deref(), Some(&["example.org:4001".to_string()][..]));
    assert_eq!(c.gpu_layers, Some(LayersSetting::Count(20)));
    let auto = FileConfig::parse("gpu_layers = \"auto\"").unwrap();
    assert_eq!(auto.gpu_layers, Some(LayersSetting::Word("auto".into())));
    assert!(FileConfig::parse("gpu_layers = 1.5").is_err());
    assert!(FileConfig::parse("prot = 1").unwrap_err().contains("prot"));
    assert!(FileConfig::parse("port = 99999").is_err());
    assert!(FileConfig::parse("port = [").is_err());
}
