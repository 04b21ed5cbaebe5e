//! A model split over a group of peers that trust each other: the member role
//! ([`member::ShardHost`], `--shard-host`) and the head role ([`head::ShardHead`],
//! `--shard-peer`), joined by `/quiver/shard/1` tunnels ([`tunnel`]). The engine side (layer
//! plan, ggml RPC, the engine worker process) is `quiver_engine::split`.

pub mod head;
pub mod member;
mod reach;
pub mod tunnel;

pub use head::{ShardHead, ShardHeadConfig, ShardHeadStatus, ShardMemberStatus};
pub use member::{ShardHost, ShardHostConfig, ShardHostStatus};
