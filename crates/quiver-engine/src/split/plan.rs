//! How a model's layers are dealt over the stages of a split: the head (its own CPU) first,
//! then each member in order. Pure functions, so the rule is tested on its own.
//!
//! llama.cpp keeps the first layers on the host's CPU and deals the rest, with the output
//! layer, over the devices in `tensor_split` proportions. [`LayerPlan::llama_params`] turns a
//! plan into exactly those two numbers, so the layers land where the plan says.

use std::ops::Range;

/// Layer counts per stage, head first. Counts are of repeating blocks. llama.cpp places the
/// output layer with the last block, but [`super::load`] keeps its weights on the head, so the
/// output is computed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// Blocks per stage: `counts[0]` on the head, `counts[i]` on member `i - 1`.
    pub counts: Vec<u32>,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("a split needs at least one member")]
    NoMembers,
    #[error("{members} members cannot share {blocks} layers (each member needs at least one)")]
    TooFewLayers { blocks: u32, members: usize },
    #[error("split weights must be finite and >= 0, and a member's > 0 (got {0:?})")]
    BadWeights(Vec<f64>),
}

impl LayerPlan {
    /// Deals `blocks` layers over stages in proportion to `weights` (head first; the head may
    /// weigh 0, a member may not), by largest remainder, every member getting at least one.
    pub fn by_weights(blocks: u32, weights: &[f64]) -> Result<LayerPlan, PlanError> {
        let members = weights.len().saturating_sub(1);
        if members == 0 {
            return Err(PlanError::NoMembers);
        }
        let bad = |w: &f64| !w.is_finite() || *w < 0.0;
        if weights.iter().any(bad) || weights[1..].iter().any(|w| *w <= 0.0) {
            return Err(PlanError::BadWeights(weights.to_vec()));
        }
        if (blocks as usize) < members {
            return Err(PlanError::TooFewLayers { blocks, members });
        }
        let total: f64 = weights.iter().sum();
        // Every member's one layer first, the rest in proportion.
        let spare = blocks - members as u32;
        let exact: Vec<f64> = weights.iter().map(|w| w / total * f64::from(blocks)).collect();
        let mut counts: Vec<u32> = (0..weights.len()).map(|i| u32::from(i > 0)).collect();
        let mut left = spare;
        // Whole parts beyond the guaranteed layer.
        for (i, e) in exact.iter().enumerate() {
            let want = (e.floor() as u32).saturating_sub(counts[i]).min(left);
            counts[i] += want;
            left -= want;
        }
        // Largest remainders (ties to the earlier stage) take what is left.
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.sort_by(|&a, &b| {
            let ra = exact[a] - f64::from(counts[a]);
            let rb = exact[b] - f64::from(counts[b]);
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        for &i in order.iter().cycle().take(left as usize) {
            counts[i] += 1;
        }
        Ok(LayerPlan { counts })
    }

    /// The plan with each member's blocks dealt over its devices in proportion to their
    /// weights (`devices[i]`: member `i`'s, e.g. their free memory; one device or none given:
    /// the member's count as it is), by largest remainder; a device may get none. The head
    /// stays one stage. The result has one count per device, for [`LayerPlan::llama_params`].
    pub fn over_devices(&self, devices: &[Vec<f64>]) -> LayerPlan {
        let mut counts = vec![self.counts.first().copied().unwrap_or(0)];
        for (i, &n) in self.counts.iter().skip(1).enumerate() {
            counts.extend(deal(n, devices.get(i).map_or(&[][..], Vec::as_slice)));
        }
        LayerPlan { counts }
    }

    /// Blocks in all.
    pub fn blocks(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// The block range of each stage, head first.
    pub fn ranges(&self) -> Vec<Range<u32>> {
        let mut start = 0;
        self.counts
            .iter()
            .map(|&n| {
                let r = start..start + n;
                start += n;
                r
            })
            .collect()
    }

    /// llama.cpp's `n_gpu_layers` and `tensor_split` (one entry per member) that place the
    /// blocks as planned: the head's on the CPU, each member's on its device, the output layer
    /// with the last member.
    pub fn llama_params(&self) -> (u32, Vec<f32>) {
        let head = self.counts.first().copied().unwrap_or(0);
        let n_gpu_layers = self.blocks() + 1 - head;
        let mut split: Vec<f32> = self.counts[1..].iter().map(|&n| n as f32).collect();
        if let Some(last) = split.last_mut() {
            *last += 1.0;
        }
        (n_gpu_layers, split)
    }
}

/// `n` blocks dealt over devices of `weights` by largest remainder (ties to the earlier
/// device); weights that are not all finite and >= 0 with a positive sum count as equal. One
/// device or none: `[n]`.
fn deal(n: u32, weights: &[f64]) -> Vec<u32> {
    if weights.len() <= 1 {
        return vec![n];
    }
    let usable = weights.iter().all(|w| w.is_finite() && *w >= 0.0) && weights.iter().sum::<f64>() > 0.0;
    let w: Vec<f64> = if usable { weights.to_vec() } else { vec![1.0; weights.len()] };
    let total: f64 = w.iter().sum();
    let exact: Vec<f64> = w.iter().map(|x| x / total * f64::from(n)).collect();
    let mut counts: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
    let left = n.saturating_sub(counts.iter().sum());
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - f64::from(counts[a]), exact[b] - f64::from(counts[b]));
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(left as usize) {
        counts[i] += 1;
    }
    counts
}

/// Where llama.cpp puts block `il` (or the output layer, `il == blocks`) given `n_gpu_layers`
/// and `tensor_split`: `None` for the host CPU, `Some(i)` for device `i`. The same arithmetic
/// as llama.cpp's loader, kept here to check plans against it.
pub fn llama_device_of(il: u32, blocks: u32, n_gpu_layers: u32, tensor_split: &[f32]) -> Option<usize> {
    let i_gpu_start = (blocks + 1).saturating_sub(n_gpu_layers);
    let act = n_gpu_layers.min(blocks + 1);
    if il < i_gpu_start || il - i_gpu_start >= act {
        return None;
    }
    let sum: f32 = tensor_split.iter().sum();
    let mut acc = 0.0f32;
    let cumulative: Vec<f32> = tensor_split
        .iter()
        .map(|s| {
            acc += s;
            acc / sum
        })
        .collect();
    let x = (il - i_gpu_start) as f32 / act as f32;
    Some(cumulative.iter().position(|&c| c > x).unwrap_or(cumulative.len()))
}

#[cfg(test)]
#[path = "../tests/split_plan.rs"]
mod tests;
