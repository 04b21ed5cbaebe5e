//! ggml's RPC backend through its registry (the workspace builds llama.cpp with `GGML_RPC=ON`,
//! see `.cargo/config.toml`): a member serves its GPUs (or else its CPU) to heads with
//! [`serve_forever`], a head's engine worker adds each member's devices with [`add_server`].
//!
//! ggml's RPC client aborts the whole process when a server goes away mid-call, which is why
//! only the head's engine *worker process* ever calls [`add_server`] (see [`super::process`]).

use std::ffi::{CStr, CString, c_char};
use std::path::Path;

use llama_cpp_sys_2 as sys;

use super::SplitError;

/// `ggml_backend_rpc_add_server(endpoint) -> reg`.
type AddServerFn = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
/// `ggml_backend_rpc_start_server(endpoint, cache_dir, n_threads, n_devices, devices)`.
type StartServerFn = unsafe extern "C" fn(*const c_char, *const c_char, usize, usize, *mut sys::ggml_backend_dev_t);

/// ggml's RPC backend, or why this build has none.
fn rpc_reg() -> Result<sys::ggml_backend_reg_t, SplitError> {
    // The registry is filled when llama.cpp's backend starts.
    crate::llama::backend()?;
    // SAFETY: a NUL-terminated name; the registry lives for the process.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if reg.is_null() {
        return Err(SplitError::NoRpc);
    }
    Ok(reg)
}

/// The address of `name` in the RPC backend.
fn proc_address(name: &CStr) -> Result<*mut std::ffi::c_void, SplitError> {
    let reg = rpc_reg()?;
    // SAFETY: `reg` is a registered backend; `name` is NUL-terminated.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    if f.is_null() {
        return Err(SplitError::NoRpc);
    }
    Ok(f)
}

/// Whether this build has ggml's RPC backend.
pub fn available() -> bool {
    proc_address(c"ggml_backend_rpc_start_server").is_ok()
}

/// A device a member serves, as its heads see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedDevice {
    /// ggml's name (`CPU`, `CUDA0`, `Vulkan0`, ...) and description (the card's name).
    pub name: String,
    pub description: String,
    pub cpu: bool,
    /// Its memory, bytes, as ggml reports it (for the CPU: the machine's).
    pub free: u64,
    pub total: u64,
}

/// Of devices of these ggml types, those a member serves: its GPUs (discrete and integrated)
/// when it has any, else its CPU (as upstream's `rpc-server` chooses). Indices into `types`.
pub fn choose_devices(types: &[sys::ggml_backend_dev_type]) -> Vec<usize> {
    let gpus: Vec<usize> = (0..types.len())
        .filter(|&i| matches!(types[i], sys::GGML_BACKEND_DEVICE_TYPE_GPU | sys::GGML_BACKEND_DEVICE_TYPE_IGPU))
        .collect();
    if !gpus.is_empty() {
        return gpus;
    }
    types.iter().position(|&t| t == sys::GGML_BACKEND_DEVICE_TYPE_CPU).into_iter().collect()
}

/// The devices this machine serves to heads (see [`choose_devices`]).
fn member_devices() -> Result<Vec<sys::ggml_backend_dev_t>, SplitError> {
    crate::llama::backend()?;
    // SAFETY: indices below the count are valid devices of the registry.
    let all: Vec<sys::ggml_backend_dev_t> = (0..unsafe { sys::ggml_backend_dev_count() })
        .map(|i| unsafe { sys::ggml_backend_dev_get(i) })
        .filter(|d| !d.is_null())
        .collect();
    // SAFETY: valid devices.
    let types: Vec<_> = all.iter().map(|&d| unsafe { sys::ggml_backend_dev_type(d) }).collect();
    let chosen: Vec<_> = choose_devices(&types).into_iter().map(|i| all[i]).collect();
    if chosen.is_empty() {
        return Err(SplitError::NoRpc);
    }
    Ok(chosen)
}

/// What a device is and holds free now.
fn describe(dev: sys::ggml_backend_dev_t) -> ServedDevice {
    let text = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: ggml returns NUL-terminated strings that live as long as the device.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: a valid device; the out-pointers are locals.
    unsafe { sys::ggml_backend_dev_memory(dev, &raw mut free, &raw mut total) };
    ServedDevice {
        // SAFETY: a valid device.
        name: text(unsafe { sys::ggml_backend_dev_name(dev) }),
        description: text(unsafe { sys::ggml_backend_dev_description(dev) }),
        // SAFETY: as above.
        cpu: unsafe { sys::ggml_backend_dev_type(dev) } == sys::GGML_BACKEND_DEVICE_TYPE_CPU,
        free: free as u64,
        total: total as u64,
    }
}

/// The devices this machine serves to heads, described.
pub fn served_devices() -> Result<Vec<ServedDevice>, SplitError> {
    Ok(member_devices()?.into_iter().map(describe).collect())
}

/// The free memory, bytes, of each device of an RPC server (as its devices returned by
/// [`add_server`] report it): what a member's blocks are dealt over its devices by.
pub fn free_memory(devices: &[sys::ggml_backend_dev_t]) -> Vec<f64> {
    devices.iter().map(|&d| describe(d).free as f64).collect()
}

/// Serves this machine's devices ([`served_devices`]) to RPC clients at `endpoint`
/// (`127.0.0.1:PORT`), its CPU with `threads` threads, one client at a time, caching received
/// weights by hash under `cache_dir`. Never returns unless the server cannot start (run it on a
/// thread of its own).
pub fn serve_forever(endpoint: &str, cache_dir: &Path, threads: u32) -> Result<(), SplitError> {
    let f = proc_address(c"ggml_backend_rpc_start_server")?;
    // SAFETY: the symbol ggml registered under this name has this signature (ggml-rpc.h).
    let start: StartServerFn = unsafe { std::mem::transmute::<*mut std::ffi::c_void, StartServerFn>(f) };
    let endpoint_c = CString::new(endpoint).map_err(|_| SplitError::Endpoint(endpoint.into()))?;
    let cache = CString::new(cache_dir.to_string_lossy().as_bytes())
        .map_err(|_| SplitError::Endpoint(cache_dir.display().to_string()))?;
    let mut devices = member_devices()?;
    // SAFETY: valid C strings and devices; the call blocks serving clients.
    unsafe { start(endpoint_c.as_ptr(), cache.as_ptr(), threads.max(1) as usize, devices.len(), devices.as_mut_ptr()) };
    Err(SplitError::ServerEnded(endpoint.into()))
}

/// Connects to the RPC server at `endpoint` and registers its devices; returns them. ggml
/// aborts the process if the server cannot be reached or answers garbage: call this only in a
/// process whose death is handled (the engine worker).
pub fn add_server(endpoint: &str) -> Result<Vec<sys::ggml_backend_dev_t>, SplitError> {
    let f = proc_address(c"ggml_backend_rpc_add_server")?;
    // SAFETY: the symbol ggml registered under this name has this signature (ggml-rpc.h).
    let add: AddServerFn = unsafe { std::mem::transmute::<*mut std::ffi::c_void, AddServerFn>(f) };
    let endpoint_c = CString::new(endpoint).map_err(|_| SplitError::Endpoint(endpoint.into()))?;
    // SAFETY: a valid C string; the returned registry lives for the process.
    let reg = unsafe { add(endpoint_c.as_ptr()) };
    if reg.is_null() {
        return Err(SplitError::Endpoint(endpoint.into()));
    }
    // SAFETY: `reg` is valid; registering makes its devices visible to llama.cpp.
    unsafe { sys::ggml_backend_register(reg) };
    // SAFETY: indices below the count are valid.
    let devices: Vec<_> = (0..unsafe { sys::ggml_backend_reg_dev_count(reg) })
        .map(|i| unsafe { sys::ggml_backend_reg_dev_get(reg, i) })
        .filter(|d| !d.is_null())
        .collect();
    if devices.is_empty() {
        return Err(SplitError::Endpoint(endpoint.into()));
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_serves_its_gpus_else_its_cpu() {
        use sys::{
            GGML_BACKEND_DEVICE_TYPE_ACCEL as ACCEL, GGML_BACKEND_DEVICE_TYPE_CPU as CPU,
            GGML_BACKEND_DEVICE_TYPE_GPU as GPU, GGML_BACKEND_DEVICE_TYPE_IGPU as IGPU,
        };
        assert_eq!(choose_devices(&[CPU, GPU, ACCEL, GPU]), vec![1, 3], "every GPU, not the CPU or BLAS");
        assert_eq!(choose_devices(&[CPU, IGPU]), vec![1], "an integrated GPU counts");
        assert_eq!(choose_devices(&[ACCEL, CPU]), vec![1], "no GPU: the CPU");
        assert_eq!(choose_devices(&[]), Vec::<usize>::new());
    }

    #[test]
    fn this_machine_serves_what_its_build_has() {
        let served = served_devices().expect("devices"); // ok: a test; no devices is the failure
        assert!(!served.is_empty());
        // A CPU-only build serves its CPU, with the machine's memory.
        if served.iter().all(|d| d.cpu) {
            assert_eq!(served.len(), 1);
            assert!(served[0].total > 0, "{served:?}");
        }
    }
}
