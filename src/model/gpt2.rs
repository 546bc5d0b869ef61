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
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_positions: usize,
    pub vocab_size: usize,

}

pub struct Gpt2 {}

impl Gpt2 {
    pub fn load(_cfg: &Config, _vb: VarBuilder) -> Result<Self> {
        Err(crate::Error::UnknownArchitecture("gpt2 not implemented yet".into()))
    }
}

impl Transformer for Gpt2 {
    fn forward(&self, _ids: &Tensor, _mask: &Tensor, _hooks: &HookSpec) -> Result<ForwardOutput> {
        unimplemented!()
    }
}

pub fn param_specs(_cfg: &Config) -> Vec<ParamSpec> {
    vec![]
}
