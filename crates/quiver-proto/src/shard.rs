//! The split-model group protocol (`/quiver/shard/1`): see `ShardHello` in `quiver.proto`.

/// Stream protocol between a head and the members of its group.
pub const SHARD_PROTOCOL: &str = "/quiver/shard/1";
/// Largest `ShardHello` or `ShardInfo` frame.
pub const MAX_SHARD_FRAME_BYTES: usize = 512;
/// Longest model name in a `ShardHello`.
pub const MAX_SHARD_MODEL_NAME: usize = 128;
