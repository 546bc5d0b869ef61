//! HF `config.json` → typed config, with architecture detection.

use std::path::Path;

use candle_nn::VarBuilder;
use serde::Deserialize;

use super::init::ParamSpec;
use super::{bert, gpt2, gpt_neox, llama, Transformer};
use crate::error::{Error, Result};

/// The config of any supported architecture.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    Gpt2(gpt2::Config),
    GptNeoX(gpt_neox::Config),
    /// Llama, Qwen2, Mistral-style and SmolLM decoders.
    Llama(llama::Config),
    /// BERT-family encoders: BERT, MiniLM, RoBERTa.
    Bert(bert::Config),
}

#[derive(Deserialize)]
struct Probe {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

impl ArchConfig {
    /// Read and detect a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Detect the architecture from `model_type` (or `architectures`) and parse its fields.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |e: serde_json::Error| Error::InvalidInput(format!("invalid config.json: {e}"));
        let probe: Probe = serde_json::from_str(text).map_err(bad)?;
        let model_type = probe
            .model_type
            .clone()
            .or_else(|| probe.architectures.first().map(|a| a.to_lowercase()))
            .unwrap_or_default();
        let kind = model_type.to_lowercase();
        Ok(match kind.as_str() {
            "gpt2" | "gpt2lmheadmodel" => {
                ArchConfig::Gpt2(serde_json::from_str(text).map_err(bad)?)
            }
            "gpt_neox" | "gptneoxforcausallm" => {
                ArchConfig::GptNeoX(serde_json::from_str(text).map_err(bad)?)
            }
            "llama" | "qwen2" | "mistral" | "llamaforcausallm" | "qwen2forcausallm" => {
                let mut cfg: llama::Config = serde_json::from_str(text).map_err(bad)?;
                if kind.starts_with("qwen2") {
                    // Qwen2 always has q/k/v biases; its config has no flag for it.
                    cfg.attention_bias = true;
                }
                ArchConfig::Llama(cfg)
            }
            "bert" | "roberta" | "xlm-roberta" | "bertmodel" | "robertamodel" => {
                let mut cfg: bert::Config = serde_json::from_str(text).map_err(bad)?;
                cfg.is_roberta = kind.contains("roberta");
                ArchConfig::Bert(cfg)
            }
            "" => {
                return Err(Error::UnknownArchitecture(
                    "(config.json has neither model_type nor architectures)".into(),
                ))
            }
            _ => return Err(Error::UnknownArchitecture(model_type)),
        })
    }

    /// Short family name: gpt2, gpt_neox, llama, bert.
    pub fn family(&self) -> &'static str {
        match self {
            ArchConfig::Gpt2(_) => "gpt2",
            ArchConfig::GptNeoX(_) => "gpt_neox",
            ArchConfig::Llama(_) => "llama",
            ArchConfig::Bert(_) => "bert",
        }
    }

    pub fn n_layers(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_layer,
            ArchConfig::GptNeoX(c) => c.num_hidden_layers,
            ArchConfig::Llama(c) => c.num_hidden_layers,
            ArchConfig::Bert(c) => c.num_hidden_layers,
        }
    }

    pub fn d_model(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_embd,
            ArchConfig::GptNeoX(c) => c.hidden_size,
            ArchConfig::Llama(c) => c.hidden_size,
            ArchConfig::Bert(c) => c.hidden_size,
        }
    }

    /// Longest input the model accepts (its position table or trained context).
    pub fn max_positions(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_positions,
            ArchConfig::GptNeoX(c) => c.max_position_embeddings,
            ArchConfig::Llama(c) => c.max_position_embeddings,
            // RoBERTa reserves padding_idx + 1 positions.
            ArchConfig::Bert(c) if c.is_roberta => c.max_position_embeddings.saturating_sub(2),
            ArchConfig::Bert(c) => c.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.vocab_size,
            ArchConfig::GptNeoX(c) => c.vocab_size,
            ArchConfig::Llama(c) => c.vocab_size,
            ArchConfig::Bert(c) => c.vocab_size,
        }
    }

    /// Encoders have no language-model head: no logits, no loss.
    pub fn is_encoder(&self) -> bool {
        matches!(self, ArchConfig::Bert(_))
    }

    /// Build the network from weights.
    pub fn build(&self, vb: VarBuilder) -> Result<Box<dyn Transformer>> {
        self.build_with(vb, &super::LoadOptions::default())
    }

    /// [`build`](Self::build) with [`LoadOptions`](super::LoadOptions) (the encoder precision).
    pub fn build_with(
        &self,
        vb: VarBuilder,
        options: &super::LoadOptions,
    ) -> Result<Box<dyn Transformer>> {
        Ok(match self {
            ArchConfig::Gpt2(c) => Box::new(gpt2::Gpt2::load(c, vb)?),
            ArchConfig::GptNeoX(c) => Box::new(gpt_neox::GptNeoX::load(c, vb)?),
            ArchConfig::Llama(c) => Box::new(llama::Llama::load(c, vb)?),
            ArchConfig::Bert(c) => Box::new(bert::Bert::load_with_dtype(
                c,
                vb,
                options.encoder_precision.dtype(),
            )?),
        })
    }

    /// Every parameter with its HF init rule (for the untrained twin).
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        match self {
            ArchConfig::Gpt2(c) => gpt2::param_specs(c),
            ArchConfig::GptNeoX(c) => gpt_neox::param_specs(c),
            ArchConfig::Llama(c) => llama::param_specs(c),
            ArchConfig::Bert(c) => bert::param_specs(c),
        }
    }
}
