//! STUB — GGUF loading (Llama family), to be replaced.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::ArchConfig;
use crate::error::Result;

/// A GGUF file turned into what [`super::Model::assemble`] needs.
pub struct GgufModel {
    pub config: ArchConfig,
    /// Dequantised f32 tensors under HF names (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
}

pub fn load(path: &Path, _device: &Device) -> Result<GgufModel> {
    Err(crate::Error::InvalidInput(format!("GGUF not implemented yet: {}", path.display())))
}
