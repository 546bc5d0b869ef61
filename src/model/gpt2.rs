//! GPT-2 (OpenAI), as implemented by Hugging Face `GPT2LMHeadModel` / `GPT2Model`.
//!
//! Pre-norm decoder: `x = wte[ids] + wpe[pos]`; each block computes
//! `x = x + attn(ln_1(x))`, then `x = x + mlp(ln_2(x))`; then `ln_f` and the LM head, tied to
//! `wte` unless the checkpoint has its own `lm_head.weight`.
//!
//! HF GPT-2 stores its projections as `Conv1D`, whose weight is `(in, out)` — the transpose of
//! `nn.Linear` — and fuses the query/key/value projections into `c_attn` as `[q | k | v]` along
//! the output dimension.
//!
//! This file also holds the pieces shared by the other causal decoders of the crate
//! ([`Activation`], [`check_inputs`], [`causal_padding_bias`], [`attend`]).

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::init::{Init, ParamSpec};
use super::{ForwardOutput, Transformer};
use crate::error::{bail, Context, Result};
use crate::hooks::{ActivationCache, HookPoint, HookSpec};

/// Hidden activations named as in HF's `ACT2FN` (`activation_function` / `hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Tanh approximation of GELU. HF's `gelu_new`, `gelu_pytorch_tanh` and `gelu_fast` are all
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, written differently.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// Exact GELU with `erf` (HF `gelu`, PyTorch `nn.GELU()`).
    #[serde(rename = "gelu")]
    Gelu,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// `x·σ(1.702·x)` (HF `quick_gelu`).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
}

impl Activation {
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluTanh => x.gelu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        }
    }
}

fn default_gelu_new() -> Activation {
    Activation::GeluTanh
}
fn default_n_positions() -> usize {
    1024
}
fn default_n_head() -> usize {
    12
}
fn default_eps() -> f64 {
    1e-5
}
fn default_init_range() -> f64 {
    0.02
}
fn yes() -> bool {
    true
}

/// HF `GPT2Config` (fields replens reads; defaults as in transformers' `GPT2Config`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    /// Size of the learned position table: the longest input.
    #[serde(default = "default_n_positions")]
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    #[serde(default = "default_n_head")]
    pub n_head: usize,
    /// MLP width; HF uses `4 * n_embd` when absent or null.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_gelu_new")]
    pub activation_function: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Divide attention scores by `sqrt(head_dim)`.
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    /// Also divide attention scores by `layer_idx + 1` (Mistral-style GPT-2 runs).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Only changes the order of f32 operations in HF's eager path; the result is the same.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

impl Config {
    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }
    fn validate(&self) -> Result<()> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "gpt2 config.json: n_embd ({}) must be a positive multiple of n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        Ok(())
    }
}

/// HF `Conv1D`: `y = x @ W + b` with `W` of shape `(in, out)`.
#[derive(Debug, Clone)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn load(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((in_dim, out_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, k) = x.dims3()?;
        x.reshape((b * t, k))?
            .matmul(&self.weight)?
            .broadcast_add(&self.bias)?
            .reshape((b, t, ()))
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    c_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    /// Multiplies `q·kᵀ`: `1/sqrt(head_dim)` (if `scale_attn_weights`) `/ (layer + 1)` (if
    /// `scale_attn_by_inverse_layer_idx`), as in HF `GPT2Attention.scaling`.
    scaling: f64,
}

/// LayerNorm with HF names `weight`/`bias`.
pub(crate) fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    let weight = vb.get(size, "weight")?;
    let bias = vb.get(size, "bias")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

/// The GPT-2 network.
pub struct Gpt2 {
    cfg: Config,
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
}

impl Gpt2 {
    /// Load from HF tensor names, with or without the `transformer.` prefix (`GPT2LMHeadModel`
    /// vs `GPT2Model` checkpoints). The LM head is `lm_head.weight` if present, else `wte`
    /// (HF ties them by default and does not save the tied copy).
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let root = vb.clone();
        let vb = if vb.contains_tensor("transformer.wte.weight") {
            vb.pp("transformer")
        } else if vb.contains_tensor("wte.weight") {
            vb
        } else {
            bail!(
                "gpt2 checkpoint has no token embedding: expected tensor transformer.wte.weight \
                 (GPT2LMHeadModel) or wte.weight (GPT2Model)"
            );
        };
        let prefix = vb.prefix();
        let d = cfg.n_embd;
        let wte = vb
            .get((cfg.vocab_size, d), "wte.weight")
            .context(|| "gpt2 token embedding (vocab_size × n_embd)".to_string())?;
        let wpe = vb
            .get((cfg.n_positions, d), "wpe.weight")
            .context(|| "gpt2 position embedding (n_positions × n_embd)".to_string())?;
        let eps = cfg.layer_norm_epsilon;
        let inner = cfg.inner_dim();
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let vb = vb.pp(format!("h.{i}"));
            let ctx = || format!("gpt2 layer {i}");
            let mut scaling = 1.0;
            if cfg.scale_attn_weights {
                scaling /= (cfg.head_dim() as f64).sqrt();
            }
            if cfg.scale_attn_by_inverse_layer_idx {
                scaling /= (i + 1) as f64;
            }
            blocks.push(Block {
                ln_1: layer_norm(d, eps, vb.pp("ln_1")).context(ctx)?,
                c_attn: Conv1D::load(d, 3 * d, vb.pp("attn.c_attn")).context(ctx)?,
                c_proj: Conv1D::load(d, d, vb.pp("attn.c_proj")).context(ctx)?,
                ln_2: layer_norm(d, eps, vb.pp("ln_2")).context(ctx)?,
                c_fc: Conv1D::load(d, inner, vb.pp("mlp.c_fc")).context(ctx)?,
                mlp_proj: Conv1D::load(inner, d, vb.pp("mlp.c_proj")).context(ctx)?,
                scaling,
            });
        }
        let ln_f = layer_norm(d, eps, vb.pp("ln_f")).context(|| "gpt2 final norm".to_string())?;
        let head = if root.contains_tensor("lm_head.weight") {
            root.get((cfg.vocab_size, d), "lm_head.weight")
                .context(|| "gpt2 LM head".to_string())?
        } else if cfg.tie_word_embeddings {
            wte.clone()
        } else {
            bail!(
                "gpt2 checkpoint has tie_word_embeddings=false but no lm_head.weight \
                 (token embedding found as {prefix}{}wte.weight)",
                if prefix.is_empty() { "" } else { "." }
            );
        };
        Ok(Self {
            cfg: cfg.clone(),
            wte: Embedding::new(wte, d),
            wpe: Embedding::new(wpe, d),
            blocks,
            ln_f,
            lm_head: Linear::new(head, None),
        })
    }
}

impl Block {
    fn attention(&self, x: &Tensor, bias: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / n_head;
        let qkv = self.c_attn.forward(x)?;
        let heads = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(D::Minus1, i * d, d)?
                .reshape((b, t, n_head, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let y = attend(&heads(0)?, &heads(1)?, &heads(2)?, bias, self.scaling)?;
        self.c_proj.forward(&y)
    }

    fn mlp(&self, x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
        self.mlp_proj.forward(&act.apply(&self.c_fc.forward(x)?)?)
    }
}

impl Transformer for Gpt2 {
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput> {
        let (_, t) = check_inputs(
            input_ids,
            attention_mask,
            self.cfg.vocab_size,
            self.cfg.n_positions,
        )?;
        let device = input_ids.device();
        let bias = causal_padding_bias(attention_mask)?;
        let mut cache = ActivationCache::new();

        // HF: position_ids = arange(seq) for every row (right padding keeps real positions).
        let positions = Tensor::arange(0u32, t as u32, device)?;
        let mut x = self
            .wte
            .forward(input_ids)?
            .broadcast_add(&self.wpe.forward(&positions)?)?;
        cache.record(hooks, HookPoint::Embed, &x);

        let act = self.cfg.activation_function;
        for (i, block) in self.blocks.iter().enumerate() {
            let ctx = || format!("gpt2 layer {i} forward");
            cache.record(hooks, HookPoint::ResidPre(i), &x);
            let h = block.ln_1.forward(&x).context(ctx)?;
            let attn = block.attention(&h, &bias, self.cfg.n_head).context(ctx)?;
            cache.record(hooks, HookPoint::AttnOut(i), &attn);
            x = (attn + &x).context(ctx)?;
            let h = block.ln_2.forward(&x).context(ctx)?;
            let mlp = block.mlp(&h, act).context(ctx)?;
            cache.record(hooks, HookPoint::MlpOut(i), &mlp);
            x = (&x + mlp).context(ctx)?;
            cache.record(hooks, HookPoint::ResidPost(i), &x);
        }
        let x = self
            .ln_f
            .forward(&x)
            .context(|| "gpt2 final norm".to_string())?;
        cache.record(hooks, HookPoint::LnFinal, &x);
        let logits = self
            .lm_head
            .forward(&x)
            .context(|| "gpt2 LM head".to_string())?;
        Ok(ForwardOutput {
            cache,
            logits: Some(logits),
        })
    }
}

/// Every parameter [`Gpt2::load`] reads, under `GPT2LMHeadModel` names (`transformer.` prefix),
/// with HF `GPT2PreTrainedModel._init_weights`: Normal(initializer_range) for embeddings and
/// Conv1D weights, zero biases, unit LayerNorm gains — except both `c_proj` weights (attention
/// output and MLP output), which get Normal(initializer_range / sqrt(2 · n_layer)), GPT-2's
/// scaled residual init.
pub fn param_specs(cfg: &Config) -> Vec<ParamSpec> {
    let d = cfg.n_embd;
    let inner = cfg.inner_dim();
    let std = cfg.initializer_range;
    let proj_std = std / (2.0 * cfg.n_layer.max(1) as f64).sqrt();
    let p = |name: String, shape: &[usize], init: Init| ParamSpec::new(name, shape, init);
    let mut specs = vec![
        p(
            "transformer.wte.weight".into(),
            &[cfg.vocab_size, d],
            Init::Normal(std),
        ),
        p(
            "transformer.wpe.weight".into(),
            &[cfg.n_positions, d],
            Init::Normal(std),
        ),
    ];
    for i in 0..cfg.n_layer {
        let n = |s: &str| format!("transformer.h.{i}.{s}");
        specs.extend([
            p(n("ln_1.weight"), &[d], Init::Ones),
            p(n("ln_1.bias"), &[d], Init::Zeros),
            p(n("attn.c_attn.weight"), &[d, 3 * d], Init::Normal(std)),
            p(n("attn.c_attn.bias"), &[3 * d], Init::Zeros),
            p(n("attn.c_proj.weight"), &[d, d], Init::Normal(proj_std)),
            p(n("attn.c_proj.bias"), &[d], Init::Zeros),
            p(n("ln_2.weight"), &[d], Init::Ones),
            p(n("ln_2.bias"), &[d], Init::Zeros),
            p(n("mlp.c_fc.weight"), &[d, inner], Init::Normal(std)),
            p(n("mlp.c_fc.bias"), &[inner], Init::Zeros),
            p(n("mlp.c_proj.weight"), &[inner, d], Init::Normal(proj_std)),
            p(n("mlp.c_proj.bias"), &[d], Init::Zeros),
        ]);
    }
    specs.push(p("transformer.ln_f.weight".into(), &[d], Init::Ones));
    specs.push(p("transformer.ln_f.bias".into(), &[d], Init::Zeros));
    if !cfg.tie_word_embeddings {
        specs.push(p(
            "lm_head.weight".into(),
            &[cfg.vocab_size, d],
            Init::Normal(std),
        ));
    }
    specs
}

// ---------------------------------------------------------------------------------------------
// Shared by the causal decoders (GPT-2, GPT-NeoX).

/// Check `(batch, seq)` u32 ids and mask of the same shape, ids inside the vocabulary and the
/// sequence within the position table, so that bad input is an error rather than an
/// out-of-range gather. Returns `(batch, seq)`.
pub(crate) fn check_inputs(
    input_ids: &Tensor,
    attention_mask: &Tensor,
    vocab_size: usize,
    max_positions: usize,
) -> Result<(usize, usize)> {
    let (b, t) = input_ids
        .dims2()
        .context(|| "input_ids must be a (batch, seq) tensor".to_string())?;
    if attention_mask.dims() != input_ids.dims() {
        bail!(
            "attention_mask has shape {:?} but input_ids has shape {:?}",
            attention_mask.dims(),
            input_ids.dims()
        );
    }
    if input_ids.dtype() != DType::U32 || attention_mask.dtype() != DType::U32 {
        bail!(
            "input_ids and attention_mask must be u32 (got {:?} and {:?})",
            input_ids.dtype(),
            attention_mask.dtype()
        );
    }
    if b == 0 || t == 0 {
        bail!("empty batch: input_ids has shape ({b}, {t})");
    }
    if t > max_positions {
        bail!("sequence length {t} exceeds the model's {max_positions} positions");
    }
    let max_id = input_ids.max_all()?.to_scalar::<u32>()? as usize;
    if max_id >= vocab_size {
        bail!("token id {max_id} is outside the vocabulary (vocab_size {vocab_size})");
    }
    Ok((b, t))
}

/// Additive attention bias `(batch, 1, seq, seq)`: 0 where query `i` may see key `j`
/// (`j <= i` and `mask[j] == 1`), `f32::MIN` elsewhere — HF's eager causal mask
/// (`torch.finfo(dtype).min`). A finite minimum keeps fully masked rows finite (uniform
/// attention) instead of NaN; with right padding every query sees at least key 0 anyway.
pub(crate) fn causal_padding_bias(attention_mask: &Tensor) -> Result<Tensor> {
    let mask = attention_mask.to_vec2::<u32>()?;
    let b = mask.len();
    let t = mask.first().map_or(0, Vec::len);
    let mut bias = vec![0f32; b * t * t];
    for (r, row) in mask.iter().enumerate() {
        for i in 0..t {
            let base = (r * t + i) * t;
            for (j, &m) in row.iter().enumerate() {
                if j > i || m == 0 {
                    bias[base + j] = f32::MIN;
                }
            }
        }
    }
    Ok(Tensor::from_vec(
        bias,
        (b, 1, t, t),
        attention_mask.device(),
    )?)
}

/// `softmax(q·kᵀ·scale + bias)·v` for `(b, h, t, hd)` q/k/v; returns `(b, t, h·hd)` with heads
/// concatenated in order, ready for the output projection.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(bias)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs
        .matmul(v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, h * hd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_match_hf() {
        let c: Config = serde_json::from_str(
            r#"{"vocab_size": 10, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": null}"#,
        )
        .unwrap();
        assert_eq!(c.inner_dim(), 256);
        assert_eq!(c.activation_function, Activation::GeluTanh);
        assert_eq!((c.n_positions, c.layer_norm_epsilon), (1024, 1e-5));
        assert!(c.scale_attn_weights && c.tie_word_embeddings);
        let specs = param_specs(&c);
        assert_eq!(specs.len(), 2 + 2 * 12 + 2);
    }

    #[test]
    fn causal_padding_bias_masks_future_and_padding() {
        let mask = Tensor::new(&[[1u32, 1, 0]], &candle_core::Device::Cpu).unwrap();
        let b = causal_padding_bias(&mask).unwrap().flatten_all().unwrap();
        let b: Vec<f32> = b.to_vec1().unwrap();
        let m = f32::MIN;
        assert_eq!(b, vec![0.0, m, m, 0.0, 0.0, m, 0.0, 0.0, m]);
    }
}
