//! Loading a model whose layers are split over the head's CPU and RPC devices.
//!
//! llama-cpp-2 0.1.160 exposes no setter for `tensor_split`, so this builds llama.cpp's model
//! parameters itself and loads through the C API. The model handle is then taken over by
//! `LlamaModel`, a one-pointer wrapper whose `Drop` frees it (checked below at compile time).
//! The clean fix is a `with_tensor_split` upstream, after which this becomes one call.

use std::ffi::CString;
use std::path::Path;
use std::ptr::{self, NonNull};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_sys_2 as sys;

use super::SplitError;
use super::plan::LayerPlan;

// `LlamaModel` must be exactly the model pointer for the hand-over below to be sound.
const _: () = assert!(std::mem::size_of::<LlamaModel>() == std::mem::size_of::<NonNull<sys::llama_model>>());
const _: () = assert!(std::mem::align_of::<LlamaModel>() == std::mem::align_of::<NonNull<sys::llama_model>>());

/// Tensors of the output layer (and the token embeddings, which tied models reuse as output).
const OUTPUT_ON_HEAD: &std::ffi::CStr = c"^(output|output_norm|token_embd)\\.";

/// Loads `path` with the plan's blocks on the CPU and on `devices` (one per stage after the
/// head's, in order: a member serving several devices has a stage for each).
pub(crate) fn load(
    path: &Path,
    devices: &[sys::ggml_backend_dev_t],
    plan: &LayerPlan,
) -> Result<LlamaModel, SplitError> {
    if devices.len() + 1 != plan.counts.len() {
        return Err(SplitError::Plan(format!("{} devices for a plan of {} stages", devices.len(), plan.counts.len())));
    }
    // SAFETY: a plain query.
    let max = unsafe { sys::llama_max_devices() };
    if devices.len() > max {
        return Err(SplitError::Plan(format!(
            "{} devices over the members; llama.cpp takes at most {max}",
            devices.len()
        )));
    }
    let (n_gpu_layers, split) = plan.llama_params();
    let mut split_all = vec![0.0f32; max.max(split.len())];
    split_all[..split.len()].copy_from_slice(&split);
    let mut devs: Vec<sys::ggml_backend_dev_t> = devices.to_vec();
    devs.push(ptr::null_mut());
    // The output layer's weights stay on the head's CPU (llama.cpp would put them with the last
    // block): the last member then sends back one hidden state per token, not the logits of
    // the whole vocabulary (2 KiB instead of 192 KiB per token for SmolLM2, 0.5 MiB for a
    // 128k-token vocabulary). Tied embeddings load the output as `token_embd.weight`.
    // SAFETY: a plain query.
    let cpu = unsafe { sys::ggml_backend_cpu_buffer_type() };
    let overrides = [
        sys::llama_model_tensor_buft_override { pattern: OUTPUT_ON_HEAD.as_ptr(), buft: cpu },
        sys::llama_model_tensor_buft_override { pattern: ptr::null(), buft: ptr::null_mut() },
    ];
    let c_path =
        CString::new(path.to_string_lossy().as_bytes()).map_err(|_| SplitError::Plan("path has a NUL".into()))?;
    // SAFETY: default parameters, then plain fields pointing at buffers that outlive the call.
    let model = unsafe {
        let mut params = sys::llama_model_default_params();
        params.devices = devs.as_mut_ptr();
        params.n_gpu_layers = i32::try_from(n_gpu_layers).unwrap_or(i32::MAX);
        params.split_mode = sys::LLAMA_SPLIT_MODE_LAYER;
        params.tensor_split = split_all.as_ptr();
        params.tensor_buft_overrides = overrides.as_ptr();
        sys::llama_model_load_from_file(c_path.as_ptr(), params)
    };
    let model =
        NonNull::new(model).ok_or_else(|| SplitError::Plan("llama.cpp could not load the split model".into()))?;
    // SAFETY: `LlamaModel` is a single non-null model pointer (asserted above) that it frees on
    // drop; `model` is a freshly loaded model owned by nobody else.
    Ok(unsafe { std::mem::transmute::<NonNull<sys::llama_model>, LlamaModel>(model) })
}
