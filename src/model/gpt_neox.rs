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

}

pub struct GptNeoX {}

impl GptNeoX {
    pub fn load(_cfg: &Config, _vb: VarBuilder) -> Result<Self> {
        Err(crate::Error::UnknownArchitecture("gpt_neox not implemented yet".into()))
    }
}

impl Transformer for GptNeoX {
    fn forward(&self, _ids: &Tensor, _mask: &Tensor, _hooks: &HookSpec) -> Result<ForwardOutput> {
        unimplemented!()
    }
}

pub fn param_specs(_cfg: &Config) -> Vec<ParamSpec> {
    vec![]
}
