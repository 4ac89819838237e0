//! Checkpoint I/O: reading safetensors files, directories and sharded indexes through memory maps,
//! decoding element types, and writing checkpoints back without ever holding a whole model.

pub mod atomic;
pub mod checkpoint;
pub mod dtype;
pub mod input;
pub mod output;
pub mod writer;

pub use checkpoint::{Checkpoint, TensorInfo};
pub use dtype::DType;
