//! ggml's RPC backend through its registry (the workspace builds llama.cpp with `GGML_RPC=ON`,
//! see `.cargo/config.toml`): a member serves its CPU to heads with [`serve_forever`], a head's
//! engine worker adds each member as a device with [`add_server`].
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

/// Serves this machine's CPU to RPC clients at `endpoint` (`127.0.0.1:PORT`) with `threads`
/// threads, one client at a time, caching received weights by hash under `cache_dir`. Never
/// returns unless the server cannot start (run it on a thread of its own).
pub fn serve_forever(endpoint: &str, cache_dir: &Path, threads: u32) -> Result<(), SplitError> {
    let f = proc_address(c"ggml_backend_rpc_start_server")?;
    // SAFETY: the symbol ggml registered under this name has this signature (ggml-rpc.h).
    let start: StartServerFn = unsafe { std::mem::transmute::<*mut std::ffi::c_void, StartServerFn>(f) };
    let endpoint_c = CString::new(endpoint).map_err(|_| SplitError::Endpoint(endpoint.into()))?;
    let cache = CString::new(cache_dir.to_string_lossy().as_bytes())
        .map_err(|_| SplitError::Endpoint(cache_dir.display().to_string()))?;
    // SAFETY: a plain query of the registry.
    let mut cpu = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
    if cpu.is_null() {
        return Err(SplitError::NoRpc);
    }
    // SAFETY: valid C strings and one valid device; the call blocks serving clients.
    unsafe { start(endpoint_c.as_ptr(), cache.as_ptr(), threads.max(1) as usize, 1, &raw mut cpu) };
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
