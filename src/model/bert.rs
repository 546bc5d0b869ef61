//! STUB — to be replaced by the real implementation.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::init::ParamSpec;
use super::{ForwardOutput, Transformer};
use crate::error::Result;
use crate::hooks::HookSpec;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    /// Set by detection from `model_type`, not read from JSON.
    #[serde(skip)]
    pub is_roberta: bool,
}

pub struct Bert {}

impl Bert {
    pub fn load(_cfg: &Config, _vb: VarBuilder) -> Result<Self> {
        Err(crate::Error::UnknownArchitecture("bert not implemented yet".into()))
    }
}

impl Transformer for Bert {
    fn forward(&self, _ids: &Tensor, _mask: &Tensor, _hooks: &HookSpec) -> Result<ForwardOutput> {
        unimplemented!()
    }
}

pub fn param_specs(_cfg: &Config) -> Vec<ParamSpec> {
    vec![]
}
