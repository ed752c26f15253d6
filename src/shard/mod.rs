//! Shards: the stateful part of payd. Each shard owns some payments and lives on one core;
//! other cores reach it by message over the mesh.
pub mod mesh;
