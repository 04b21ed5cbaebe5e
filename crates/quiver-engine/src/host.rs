//! What the machine offers a provider, and the defaults drawn from it: threads from the
//! physical cores, context size and slots from the memory available.
//!
//! The rules are pure functions over what was read ([`physical_cores_from`],
//! [`mem_available_from`], [`memory_defaults`]), so they are tested on sample inputs; the
//! readers of `/sys` and `/proc` around them fall back when those files are missing.

use std::collections::BTreeSet;
use std::path::Path;

/// Context size (tokens per slot) used when memory allows it: today's default, the upper value.
pub const DEFAULT_CONTEXT: u32 = 2048;
/// Smallest context size the memory rule goes down to.
pub const MIN_CONTEXT: u32 = 512;
/// Slots (sequences decoded together) used when memory allows it: the upper value.
pub const DEFAULT_SLOTS: u32 = crate::llama::DEFAULT_SLOTS;

/// One online CPU's place in the topology: (package, core). CPUs sharing both are hyperthreads
/// of one physical core.
pub type CpuCore = (u64, u64);

/// Physical cores among the CPUs listed: distinct (package, core id) pairs. `None` when the
/// list is empty (the topology could not be read).
pub fn physical_cores_from(cpus: &[CpuCore]) -> Option<u32> {
    let distinct: BTreeSet<&CpuCore> = cpus.iter().collect();
    u32::try_from(distinct.len()).ok().filter(|&n| n > 0)
}

/// Reads `<sys>/cpuN/topology/{physical_package_id,core_id}` of the online CPUs (`<sys>/online`,
/// e.g. `0-3,6`; all `cpuN` directories when it is missing). `sys` is normally
/// `/sys/devices/system/cpu`.
pub fn read_topology(sys: &Path) -> Vec<CpuCore> {
    let read_u64 = |p: &Path| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let cpus: Vec<u64> = match std::fs::read_to_string(sys.join("online")) {
        Ok(list) => parse_cpu_list(&list),
        Err(_) => std::fs::read_dir(sys)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix("cpu")?.parse::<u64>().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    cpus.into_iter()
        .filter_map(|cpu| {
            let topo = sys.join(format!("cpu{cpu}/topology"));
            Some((read_u64(&topo.join("physical_package_id")).unwrap_or(0), read_u64(&topo.join("core_id"))?))
        })
        .collect()
}

/// A kernel CPU list such as `0-3,6,8-9` (at most 65,536 CPUs; malformed parts are skipped).
pub fn parse_cpu_list(list: &str) -> Vec<u64> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u64>(), b.trim().parse::<u64>()),
            None => (part.parse::<u64>(), part.parse::<u64>()),
        };
        if let (Ok(lo), Ok(hi)) = (lo, hi) {
            for cpu in lo..=hi.min(lo.saturating_add(65_535)) {
                if cpus.len() >= 65_536 {
                    return cpus;
                }
                cpus.push(cpu);
            }
        }
    }
    cpus
}

/// Default engine threads: the physical cores, no more than the CPUs this process may use
/// (affinity and cgroup quota, as [`std::thread::available_parallelism`] counts them); the
/// available parallelism when the topology cannot be read.
pub fn default_threads() -> u32 {
    let usable = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    threads_rule(physical_cores_from(&read_topology(Path::new("/sys/devices/system/cpu"))), usable)
}

/// The rule of [`default_threads`]: physical cores capped by the usable CPUs, else the usable
/// CPUs; at least 1.
pub fn threads_rule(physical: Option<u32>, usable: u32) -> u32 {
    physical.map_or(usable, |p| p.min(usable)).max(1)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn mem_available_from(meminfo: &str) -> Option<u64> {
    meminfo_field(meminfo, "MemAvailable:")
}

/// A `/proc/meminfo` field (`MemTotal:`, ...) in bytes.
fn meminfo_field(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.trim();
        let kib = rest.strip_suffix("kB").unwrap_or(rest).trim().parse::<u64>().ok()?;
        kib.checked_mul(1024)
    })
}

/// This machine's memory (`MemTotal`); `None` when it cannot be read.
pub fn total_memory() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(|m| meminfo_field(m, "MemTotal:"))
}

/// Memory available to new work on this machine (`MemAvailable`, capped by the cgroup's
/// `memory.max` less its `memory.current` when there is one); `None` when it cannot be read.
pub fn available_memory() -> Option<u64> {
    let host = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(mem_available_from);
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup = match (read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current")) {
        (Some(max), Some(current)) => Some(max.saturating_sub(current)),
        _ => None,
    };
    match (host, cgroup) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

/// Context size and slots of an engine, from what the user gave and the memory available.
///
/// The KV cache takes `slots × context × kv_per_token` bytes. It may use half of the memory
/// left once the model's weights (`model_bytes`) are counted; the other half stays for the
/// compute buffers, the rest of the process and the machine. Given values are kept. Without
/// either: [`DEFAULT_CONTEXT`] with the most slots up to [`DEFAULT_SLOTS`] that fit, then,
/// with one slot, the context halved down to [`MIN_CONTEXT`]. With only the context given: the
/// most slots up to [`DEFAULT_SLOTS`] that fit (at least 1). With only the slots given: the
/// largest context of 2048, 1024, 512 that fits ([`MIN_CONTEXT`] when none does). Unknown
/// memory (`None`) or an unknown KV size (0) gives the upper values.
pub fn memory_defaults(
    available: Option<u64>,
    model_bytes: u64,
    kv_per_token: u64,
    context: Option<u32>,
    slots: Option<u32>,
) -> (u32, u32) {
    let (Some(available), true) = (available, kv_per_token > 0) else {
        return (context.unwrap_or(DEFAULT_CONTEXT), slots.unwrap_or(DEFAULT_SLOTS));
    };
    let budget = available.saturating_sub(model_bytes) / 2;
    let fits = |ctx: u32, n: u32| u64::from(ctx).saturating_mul(u64::from(n)).saturating_mul(kv_per_token) <= budget;
    let most_slots = |ctx: u32| (1..=DEFAULT_SLOTS).rev().find(|&n| fits(ctx, n));
    let largest_context = |n: u32| {
        let mut ctx = DEFAULT_CONTEXT;
        while ctx > MIN_CONTEXT && !fits(ctx, n) {
            ctx /= 2;
        }
        ctx.max(MIN_CONTEXT)
    };
    match (context, slots) {
        (Some(c), Some(s)) => (c, s),
        (Some(c), None) => (c, most_slots(c).unwrap_or(1)),
        (None, Some(s)) => (largest_context(s), s),
        (None, None) => match most_slots(DEFAULT_CONTEXT) {
            Some(n) => (DEFAULT_CONTEXT, n),
            None => (largest_context(1), 1),
        },
    }
}

#[cfg(test)]
#[path = "tests/host.rs"]
mod tests;
