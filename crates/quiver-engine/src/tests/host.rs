//! Unit tests of `host.rs`: physical cores, available memory and the defaults drawn from them.

use super::*;

#[test]
fn physical_cores_count_distinct_package_core_pairs() {
    // 2 packages × 2 cores × 2 hyperthreads.
    let cpus = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 0), (0, 1), (1, 0), (1, 1)];
    assert_eq!(physical_cores_from(&cpus), Some(4));
    // No hyperthreads.
    assert_eq!(physical_cores_from(&[(0, 0), (0, 1)]), Some(2));
    // Core ids need not be contiguous.
    assert_eq!(physical_cores_from(&[(0, 0), (0, 4), (0, 8), (0, 0)]), Some(3));
    assert_eq!(physical_cores_from(&[]), None);
}

#[test]
fn topology_read_from_a_sample_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path();
    // 4 logical CPUs, 2 cores with 2 threads each; cpu4 is offline.
    for (cpu, core) in [(0, 0), (1, 1), (2, 0), (3, 1), (4, 2)] {
        let topo = sys.join(format!("cpu{cpu}/topology"));
        std::fs::create_dir_all(&topo).unwrap();
        std::fs::write(topo.join("core_id"), format!("{core}\n")).unwrap();
        std::fs::write(topo.join("physical_package_id"), "0\n").unwrap();
    }
    std::fs::create_dir_all(sys.join("cpufreq")).unwrap();
    std::fs::write(sys.join("online"), "0-3\n").unwrap();
    assert_eq!(physical_cores_from(&read_topology(sys)), Some(2));
    // Without `online`, every cpuN directory counts.
    std::fs::remove_file(sys.join("online")).unwrap();
    assert_eq!(physical_cores_from(&read_topology(sys)), Some(3));
    // Nothing readable: no count (the caller falls back).
    assert_eq!(physical_cores_from(&read_topology(&sys.join("missing"))), None);
}

#[test]
fn cpu_lists() {
    assert_eq!(parse_cpu_list("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
    assert_eq!(parse_cpu_list("0"), vec![0]);
    assert_eq!(parse_cpu_list(""), Vec::<u64>::new());
    assert_eq!(parse_cpu_list("x,2,3-a"), vec![2]);
    assert_eq!(parse_cpu_list("0-18446744073709551615").len(), 65_536);
}

#[test]
fn threads_rule_caps_physical_by_usable() {
    assert_eq!(threads_rule(Some(8), 16), 8);
    assert_eq!(threads_rule(Some(8), 4), 4);
    assert_eq!(threads_rule(None, 6), 6);
    assert_eq!(threads_rule(Some(0), 0), 1);
    assert!(default_threads() >= 1);
}

#[test]
fn meminfo() {
    let text = "MemTotal:       24683784 kB\nMemFree:         1000 kB\nMemAvailable:   22833480 kB\n";
    assert_eq!(mem_available_from(text), Some(22_833_480 * 1024));
    assert_eq!(mem_available_from("MemTotal: 5 kB\n"), None);
    assert_eq!(mem_available_from("MemAvailable: lots\n"), None);
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[test]
fn memory_defaults_keep_todays_values_when_memory_allows() {
    // 23 KB of KV per token (SmolLM2-135M), 16 GiB free: 2048 tokens × 4 slots.
    assert_eq!(memory_defaults(Some(16 * GIB), 100 * MIB, 23_040, None, None), (2048, 4));
    // Unknown memory or KV size: the upper values.
    assert_eq!(memory_defaults(None, 100 * MIB, 23_040, None, None), (2048, 4));
    assert_eq!(memory_defaults(Some(GIB), 100 * MIB, 0, None, None), (2048, 4));
    // Given values are kept, even when they do not fit.
    assert_eq!(memory_defaults(Some(0), 100 * MIB, 1 << 20, Some(4096), Some(8)), (4096, 8));
}

#[test]
fn memory_defaults_shrink_slots_then_context() {
    // 1 MiB of KV per token: 2048 tokens take 2 GiB per slot.
    let kv = MIB;
    let model = GIB;
    // Half of what is left after the model: room for 2 slots of 2048.
    assert_eq!(memory_defaults(Some(model + 8 * GIB + GIB), model, kv, None, None), (2048, 2));
    // Room for one slot of 2048 tokens.
    assert_eq!(memory_defaults(Some(model + 4 * GIB), model, kv, None, None), (2048, 1));
    // Room for less: one slot, the context halved.
    assert_eq!(memory_defaults(Some(model + 2 * GIB), model, kv, None, None), (1024, 1));
    // Nothing left: the smallest context, one slot.
    assert_eq!(memory_defaults(Some(model / 2), model, kv, None, None), (MIN_CONTEXT, 1));
    // Only the context given: the slots that fit it.
    assert_eq!(memory_defaults(Some(model + 4 * GIB), model, kv, Some(512), None), (512, 4));
    assert_eq!(memory_defaults(Some(model + 4 * GIB), model, kv, Some(1024), None), (1024, 2));
    assert_eq!(memory_defaults(Some(0), model, kv, Some(1024), None), (1024, 1));
    // Only the slots given: the context that fits them.
    assert_eq!(memory_defaults(Some(model + 4 * GIB), model, kv, None, Some(2)), (1024, 2));
    assert_eq!(memory_defaults(Some(model + 64 * GIB), model, kv, None, Some(8)), (2048, 8));
    assert_eq!(memory_defaults(Some(0), model, kv, None, Some(8)), (MIN_CONTEXT, 8));
    // Never above today's defaults.
    assert_eq!(memory_defaults(Some(u64::MAX), 0, 1, None, None), (DEFAULT_CONTEXT, DEFAULT_SLOTS));
}
