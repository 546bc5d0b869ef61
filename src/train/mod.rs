//! Small training loops on candle-nn: probes, MI critics, LoRA adapters, uncertainty heads.

pub mod adue;
pub mod lora;
pub mod mine;
pub mod probe;
pub mod stitch;
pub mod toy;
