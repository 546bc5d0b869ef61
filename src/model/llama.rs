//! Llama-family decoders: Llama 1/2/3, Mistral, Qwen2 and SmolLM/SmolLM2, with TransformerLens hooks.
//!
//! The forward pass follows Hugging Face's `modeling_llama.py` (and its Mistral / Qwen2 copies)
//! operation by operation, so that hidden states match transformers in f32:
//!
//! ```text
//! x = embed_tokens(ids)                                   hook_embed
//! for each block i:                                       blocks.i.hook_resid_pre
//!     a = o_proj(attn(rope(q_proj(rms1(x))), rope(k_proj(..)), v_proj(..)))
//!                                                         blocks.i.hook_attn_out
//!     x = x + a
//!     m = down_proj(silu(gate_proj(rms2(x))) * up_proj(rms2(x)))
//!                                                         blocks.i.hook_mlp_out
//!     x = x + m                                           blocks.i.hook_resid_post
//! h = norm(x)                                             ln_final.hook_normalized
//! logits = lm_head(h)          (lm_head = embed_tokens when tied)
//! ```
//!
//! Grouped-query attention repeats each key/value head `n_heads / n_kv_heads` times exactly as
//! HF's `repeat_kv`; rotary embeddings use HF's `rotate_half` layout (first half / second half of
//! each head), which is also what checkpoints converted *from* GGUF need once
//! [`super::gguf`] has undone llama.cpp's row permutation of `q_proj` / `k_proj`.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Deserializer};

use super::init::{Init, ParamSpec};
use super::{ForwardOutput, Transformer};
use crate::error::{Context, Error, Result};
use crate::hooks::{ActivationCache, HookPoint, HookSpec};

fn default_hidden_act() -> String {
    "silu".to_string()
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_initializer_range() -> f64 {
    0.02
}

/// `#[serde(default, deserialize_with = "present")]` turns a missing key into `None` and a JSON
/// `null` into `Some(None)`: Mistral's `sliding_window` defaults to 4096 when the key is absent but
/// is disabled by an explicit `null`.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// RoPE parameters: transformers ≥ 5 writes them as `rope_parameters`, older configs as
/// `rope_scaling` (with `rope_theta` at the top level). Every field is optional. Shared by
/// every rotary family (Llama, Qwen2, GPT-NeoX).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    /// Old spelling of `rope_type` (`{"type": "linear", "factor": 2.0}`).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Fraction of each head that is rotated (GPT-NeoX; Llama rotates whole heads).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

impl RopeParameters {
    fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.kind.as_deref())
            .unwrap_or("default")
    }
}

/// HF `LlamaConfig` / `MistralConfig` / `Qwen2Config` fields, with HF's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `llama`, `mistral`, `qwen2`, ... Decides the sliding-window rules and whether `o_proj`
    /// has a bias (Qwen2 biases only q/k/v).
    #[serde(default)]
    pub model_type: Option<String>,
    /// HF class names; stand in for `model_type` when a config lacks it.
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); HF defaults it to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; HF defaults it to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// The context window. Llama has no position table, so this is what length checks use.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Top-level `rope_theta` (transformers < 5); `rope_parameters.rope_theta` wins when present.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o (Llama's flag; `config.rs` sets it for Qwen2, whose o_proj has none).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// `None`: key absent; `Some(None)`: explicit null.
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    /// Qwen2 only: sliding windows are off unless this is true.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Qwen2: layers `>= max_window_layers` slide (when `layer_types` is absent). HF default 28.
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// `full_attention` / `sliding_attention` per layer (transformers ≥ 4.53).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
}

impl Config {
    /// `model_type`, else the first `architectures` entry without its `For…` suffix, lowercased.
    fn family(&self) -> String {
        match &self.model_type {
            Some(t) => t.to_lowercase(),
            None => self
                .architectures
                .first()
                .map(|a| a.split("For").next().unwrap_or(a).to_lowercase())
                .unwrap_or_default(),
        }
    }

    fn is_qwen2(&self) -> bool {
        self.family() == "qwen2"
    }

    fn is_mistral(&self) -> bool {
        self.family() == "mistral"
    }

    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// q/k/v biases: Llama's `attention_bias`, always for Qwen2.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.is_qwen2()
    }

    /// o_proj bias: Llama's `attention_bias`; never for Qwen2 (HF `Qwen2Attention`: `bias=False`).
    pub fn o_bias(&self) -> bool {
        self.attention_bias && !self.is_qwen2()
    }

    /// The RoPE parameters in force: `rope_parameters` (transformers ≥ 5) or `rope_scaling`.
    fn rope(&self) -> RopeParameters {
        self.rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_default()
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    /// Sliding attention window of block `layer`, following HF:
    /// Mistral slides every layer by `sliding_window` (default 4096, off if `null`);
    /// Qwen2 only when `use_sliding_window`, on the layers `layer_types` marks (or `>= max_window_layers`);
    /// Llama never slides.
    pub fn window(&self, layer: usize) -> Option<usize> {
        if self.is_mistral() {
            return self.sliding_window.unwrap_or(Some(4096));
        }
        if self.is_qwen2() && self.use_sliding_window == Some(true) {
            let window = self.sliding_window.unwrap_or(Some(4096))?;
            let slides = match &self.layer_types {
                Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
                None => layer >= self.max_window_layers.unwrap_or(28),
            };
            return slides.then_some(window);
        }
        None
    }

    /// RoPE inverse frequencies as HF computes them in f32 (`modeling_rope_utils.py`):
    /// `1 / theta^(2i/dim)`, then the `linear` or `llama3` rescaling. `dynamic` NTK scaling only
    /// changes anything beyond `max_position_embeddings`, which replens never runs, so it is the
    /// default. Other types are an error naming the type.
    pub fn inv_freq(&self) -> Result<Vec<f32>> {
        let dim = self.head_dim();
        let theta = self.rope_theta() as f32;
        let base: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0f32 / theta.powf(i as f32 / dim as f32))
            .collect();
        let rope = self.rope();
        let need = |v: Option<f64>, key: &str| {
            v.ok_or_else(|| {
                Error::InvalidInput(format!(
                    "rope type '{}' needs rope_parameters.{key} in the config",
                    rope.kind()
                ))
            })
        };
        match rope.kind() {
            "default" | "dynamic" => Ok(base),
            "linear" => {
                let factor = need(rope.factor, "factor")? as f32;
                Ok(base.into_iter().map(|f| f / factor).collect())
            }
            "llama3" => {
                let factor = need(rope.factor, "factor")? as f32;
                let low = need(rope.low_freq_factor, "low_freq_factor")? as f32;
                let high = need(rope.high_freq_factor, "high_freq_factor")? as f32;
                let old_ctx = rope
                    .original_max_position_embeddings
                    .unwrap_or(self.max_position_embeddings) as f32;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                Ok(base
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            scaled
                        } else {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        }
                    })
                    .collect())
            }
            other => Err(Error::InvalidInput(format!(
                "rope type '{other}' is not supported (supported: default, linear, llama3, dynamic)"
            ))),
        }
    }

    /// Reject configs this implementation would silently get wrong.
    fn validate(&self) -> Result<()> {
        let act = self.hidden_act.as_str();
        if act != "silu" && act != "swish" {
            return Err(Error::InvalidInput(format!(
                "hidden_act '{act}' is not supported for the Llama family (expected silu)"
            )));
        }
        let (h, kv) = (self.num_attention_heads, self.n_kv_heads());
        if h == 0 || kv == 0 || !h.is_multiple_of(kv) {
            return Err(Error::InvalidInput(format!(
                "num_attention_heads ({h}) must be a positive multiple of num_key_value_heads ({kv})"
            )));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return Err(Error::InvalidInput(format!(
                "head_dim ({}) must be even and positive for rotary embeddings",
                self.head_dim()
            )));
        }
        self.inv_freq().map(|_| ())
    }
}

/// HF `LlamaRMSNorm`: `weight * (x * rsqrt(mean(x²) + eps))`.
///
/// The mean of squares is accumulated in f64 and rounded once to the model dtype, as torch's
/// vectorised reduction nearly does. candle's fused kernel sums sequentially in f32; on SmolLM2
/// that alone makes block 0's error against an f64 reference 2.5e-5 instead of 9e-6 (the level
/// of transformers' own f32), and the error compounds through the 30 blocks.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = super::fast::rms_norm(x, &self.weight, self.eps as f32)? {
            return Ok(y);
        }
        let dtype = x.dtype();
        let var = x
            .to_dtype(DType::F64)?
            .sqr()?
            .mean_keepdim(D::Minus1)?
            .to_dtype(dtype)?;
        // HF adds the eps as a Python float to an f32 tensor: it is rounded to f32.
        let eps = if dtype == DType::F64 {
            self.eps
        } else {
            self.eps as f32 as f64
        };
        let inv = (var + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)
    }
}

/// One grouped-query self-attention sub-layer.
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    n_heads: usize,
    n_kv_heads: usize,
}

/// Width of the blocks the reduction of [`Proj`] is split into.
const K_BLOCK: usize = 256;

/// A linear layer `y = x Wᵀ + b` (HF `nn.Linear`) whose reduction over the input dimension runs
/// in blocks of [`K_BLOCK`] inputs, each an f32 matmul, the partial products then summed.
///
/// Why: candle's CPU matmul (the `gemm` crate) accumulates each output along the whole input
/// dimension in one f32 register, which is ~3x noisier than MKL's sgemm under torch (SmolLM2's
/// `down_proj`, 1536 inputs: max error against an f64 product 3.2e-5, torch 8.9e-6, 256-wide
/// blocks 1.8e-5, 64-wide 9.4e-6). SmolLM2's MLPs build "massive activations" (|x| ≈ 2.3e4), and
/// with candle's plain matmul our hidden states ended up ~5x further from transformers' than
/// transformers' own f32 rounding error (measured against the same model in f64); with 256-wide
/// blocks they are within ~2.3x of it, the level of two independent f32 implementations.
/// Cost: as separate products added with candle, ~1.25x candle's plain matmul (16 cores, SmolLM2,
/// 8 × 128 tokens); f32 CPU inference now goes through [`super::fast::blocked_matmul`], one
/// `gemm` call per block adding into one output, whose cost is within the run-to-run noise of a
/// plain matmul (stop 15, 2 cores). The blocks are stored pre-transposed and contiguous (also
/// what makes a text's results independent of the batch it is padded into).
struct Proj {
    /// `(k_i, out)` contiguous blocks of `Wᵀ`, `Σ k_i = in`.
    blocks: Vec<Tensor>,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

impl Proj {
    fn load(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        let blocks = (0..in_dim)
            .step_by(K_BLOCK)
            .map(|start| {
                let len = K_BLOCK.min(in_dim - start);
                weight.narrow(1, start, len)?.t()?.contiguous()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            blocks,
            bias,
            in_dim,
            out_dim,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut out_shape = x.dims().to_vec();
        match out_shape.last_mut() {
            Some(last) if *last == self.in_dim => *last = self.out_dim,
            _ => candle_core::bail!(
                "linear layer expects {} input features, got shape {:?}",
                self.in_dim,
                x.dims()
            ),
        }
        let rows = x.elem_count() / self.in_dim.max(1);
        let x = x.reshape((rows, self.in_dim))?;
        let y = match super::fast::blocked_matmul(&x, &self.blocks, self.out_dim)? {
            Some(y) => y,
            None => self.blocked_matmul_generic(&x, rows)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape(out_shape)
    }

    /// `x · Wᵀ` for `x` of shape `(rows, in_dim)` as separate candle products of the blocks,
    /// added in order: any dtype, device and autograd.
    fn blocked_matmul_generic(&self, x: &Tensor, rows: usize) -> candle_core::Result<Tensor> {
        let mut acc: Option<Tensor> = None;
        let mut start = 0;
        for block in &self.blocks {
            let len = block.dim(0)?;
            let part = x.narrow(1, start, len)?.contiguous()?.matmul(block)?;
            acc = Some(match acc {
                None => part,
                Some(a) => (a + part)?,
            });
            start += len;
        }
        match acc {
            Some(y) => Ok(y),
            None => Tensor::zeros((rows, self.out_dim), x.dtype(), x.device()),
        }
    }
}

impl Attention {
    fn load(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (d, h, kv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
        );
        Ok(Self {
            q_proj: Proj::load(d, h * hd, cfg.qkv_bias(), vb.pp("q_proj"))?,
            k_proj: Proj::load(d, kv * hd, cfg.qkv_bias(), vb.pp("k_proj"))?,
            v_proj: Proj::load(d, kv * hd, cfg.qkv_bias(), vb.pp("v_proj"))?,
            o_proj: Proj::load(h * hd, d, cfg.o_bias(), vb.pp("o_proj"))?,
            n_heads: h,
            n_kv_heads: kv,
        })
    }

    /// `x`: `(b, t, d)`; `cos`/`sin`: `(t, head_dim / 2)`; `mask`: `(b, 1, t, t)` additive (0 / −∞).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (q, k, v) = (
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        );
        let out = attend(&q, &k, &v, cos, sin, mask, self.n_heads, self.n_kv_heads)?;
        self.o_proj.forward(&out)
    }
}

/// HF eager attention from the projections `q` `(b, t, heads · hd)` and `k`, `v`
/// `(b, t, kv_heads · hd)`: rotary on q and k, `softmax((q @ kᵀ) · hd^-½ + mask) @ v` per head
/// (query head `j` reading key/value head `j / (heads / kv_heads)`, HF's `repeat_kv`), the
/// heads side by side again `(b, t, heads · hd)`. Untracked f32 CPU tensors take the fused
/// kernel ([`super::fast::rotary_attention`]), which computes the same values as the candle ops
/// below.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: &Tensor,
    n_heads: usize,
    n_kv_heads: usize,
) -> candle_core::Result<Tensor> {
    let (b, t, q_width) = q.dims3()?;
    let head_dim = q_width / n_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let fused = super::fast::rotary_attention(q, k, v, cos, sin, mask, scale, n_heads, n_kv_heads)?;
    if let Some(out) = fused {
        return Ok(out);
    }
    let heads = |y: &Tensor, n: usize| {
        y.reshape((b, t, n, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = candle_nn::rotary_emb::rope(&heads(q, n_heads)?, cos, sin)?;
    let k = candle_nn::rotary_emb::rope(&heads(k, n_kv_heads)?, cos, sin)?;
    let v = heads(v, n_kv_heads)?;
    let n_rep = n_heads / n_kv_heads;
    let (k, v) = (repeat_kv(k, n_rep)?, repeat_kv(v, n_rep)?);
    // kᵀ made contiguous: with a transposed view, `gemm` picks kernels by sequence length and
    // a real token's scores would change in the last bits when padding lengthens the batch.
    let scores = (super::fast::matmul(&q, &k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = super::fast::matmul(&probs, &v.contiguous()?)?;
    out.transpose(1, 2)?.reshape((b, t, n_heads * head_dim))
}

/// HF `repeat_kv`: `(b, kv, t, hd)` → `(b, kv * n_rep, t, hd)`, head `j` reading kv head `j / n_rep`.
fn repeat_kv(x: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, hd))?
        .reshape((b, kv * n_rep, t, hd))
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

impl Mlp {
    fn load(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let (d, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Proj::load(d, i, bias, vb.pp("gate_proj"))?,
            up_proj: Proj::load(d, i, bias, vb.pp("up_proj"))?,
            down_proj: Proj::load(i, d, bias, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let product = match super::fast::silu_mul(&gate, &up)? {
            Some(product) => product,
            None => (candle_nn::ops::silu(&gate)? * up)?,
        };
        self.down_proj.forward(&product)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    window: Option<usize>,
}

impl Block {
    fn load(cfg: &Config, layer: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::load(d, eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::load(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::load(d, eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::load(cfg, vb.pp("mlp"))?,
            window: cfg.window(layer),
        })
    }
}

/// A Llama-family decoder with an LM head.
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// `(vocab, d)`: the unembedding, shared with `embed_tokens` when tied.
    lm_head: Tensor,
    inv_freq: Vec<f32>,
    vocab_size: usize,
    device: Device,
}

impl Llama {
    /// Read weights under HF names (`model.embed_tokens.weight`, `model.layers.{i}.…`,
    /// `model.norm.weight`, `lm_head.weight`). The LM head is the embedding matrix when
    /// `tie_word_embeddings` is set or `lm_head.weight` is absent (GGUF files without `output`).
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let device = vb.device().clone();
        let m = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, m.pp("embed_tokens"))
                .context(|| "model.embed_tokens.weight".to_string())?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                Block::load(cfg, i, m.pp(format!("layers.{i}")))
                    .context(|| format!("layer {i} (model.layers.{i}.*)"))
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))
            .context(|| "model.norm.weight".to_string())?;
        let lm_head = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            embed_tokens.embeddings().clone()
        } else {
            vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")
                .context(|| "lm_head.weight".to_string())?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq: cfg.inv_freq()?,
            vocab_size: cfg.vocab_size,
            device,
        })
    }

    /// `logits = h Wᵀ`, computed as `(W hᵀ)ᵀ` with both operands contiguous. With `Wᵀ` as a
    /// transposed view (candle's `Linear`), `gemm` picks its kernel by the number of rows, so a
    /// text's logits would change in the last bits with the batch it is padded into; this form is
    /// row-independent and copies neither the (possibly tied) vocabulary matrix nor much else.
    /// A single row is doubled (and the copy dropped) because `gemm` has a separate
    /// matrix-vector kernel for one column, which rounds differently.
    fn logits(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let rows = h.reshape((b * t, d))?;
        let rows = if b * t == 1 {
            Tensor::cat(&[&rows, &rows], 0)?
        } else {
            rows
        };
        let vocab = self.lm_head.dim(0)?;
        self.lm_head
            .matmul(&rows.t()?.contiguous()?)?
            .t()?
            .narrow(0, 0, b * t)?
            .contiguous()?
            .reshape((b, t, vocab))
    }

    /// `cos`, `sin` of shape `(t, head_dim / 2)` for positions `0..t`, as HF's rotary embedding:
    /// `freqs = position * inv_freq` and cos/sin in f32 (HF does this in f32 whatever the model
    /// dtype), then cast to `dtype`.
    fn rotary(&self, t: usize, dtype: DType) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let freqs: Vec<f32> = (0..t)
            .flat_map(|p| self.inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let cos: Vec<f32> = freqs.iter().map(|x| x.cos()).collect();
        let sin: Vec<f32> = freqs.iter().map(|x| x.sin()).collect();
        Ok((
            Tensor::from_vec(cos, (t, half), &self.device)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (t, half), &self.device)?.to_dtype(dtype)?,
        ))
    }

    /// Additive mask `(b, 1, t, t)`: query `i` sees key `j` when `j <= i`, key `j` is a real token
    /// (and, with a sliding window `w`, `j > i - w`, as HF's `sliding_window_overlay`). The
    /// diagonal is always open so that padding queries never get an all −∞ row (no NaN); real
    /// tokens are unaffected because with right padding their keys are all real.
    fn mask(
        &self,
        keep: &[Vec<u32>],
        t: usize,
        window: Option<usize>,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let b = keep.len();
        let mut data = vec![f32::NEG_INFINITY; b * t * t];
        for (row, keys) in keep.iter().enumerate() {
            for i in 0..t {
                let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
                for j in lo..=i {
                    if j == i || keys.get(j).copied().unwrap_or(0) != 0 {
                        data[(row * t + i) * t + j] = 0.0;
                    }
                }
            }
        }
        Tensor::from_vec(data, (b, 1, t, t), &self.device)?.to_dtype(dtype)
    }

    fn check_inputs(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Vec<Vec<u32>>> {
        let (b, t) = input_ids
            .dims2()
            .context(|| "input_ids must be (batch, seq)".to_string())?;
        if attention_mask.dims() != [b, t] {
            return Err(Error::InvalidInput(format!(
                "attention_mask has shape {:?} but input_ids has ({b}, {t})",
                attention_mask.dims()
            )));
        }
        if t == 0 {
            return Err(Error::InvalidInput("input_ids has no positions".into()));
        }
        let ids = input_ids
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        if let Some((pos, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.vocab_size)
        {
            return Err(Error::InvalidInput(format!(
                "token id {id} at (batch {}, position {}) is outside the vocabulary of {} tokens",
                pos / t,
                pos % t,
                self.vocab_size
            )));
        }
        Ok(attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?)
    }
}

/// `x + delta`, through the fused kernel when it applies.
fn residual(x: &Tensor, delta: &Tensor) -> candle_core::Result<Tensor> {
    match super::fast::add(x, delta)? {
        Some(sum) => Ok(sum),
        None => x + delta,
    }
}

impl Transformer for Llama {
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput> {
        let keep = self.check_inputs(input_ids, attention_mask)?;
        let (_, t) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?;
        let mut cache = ActivationCache::new();

        let mut x = self
            .embed_tokens
            .forward(&ids)
            .context(|| "embedding lookup (model.embed_tokens)".to_string())?;
        cache.record(hooks, HookPoint::Embed, &x);

        let (cos, sin) = self
            .rotary(t, x.dtype())
            .context(|| "rotary embeddings".to_string())?;
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::with_capacity(2);
        for (i, block) in self.layers.iter().enumerate() {
            cache.record(hooks, HookPoint::ResidPre(i), &x);
            let mask = match masks.iter().find(|(w, _)| *w == block.window) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = self.mask(&keep, t, block.window, x.dtype())?;
                    masks.push((block.window, m.clone()));
                    m
                }
            };
            let h = block
                .input_layernorm
                .forward(&x)
                .context(|| format!("layer {i}: input_layernorm"))?;
            let attn = block
                .self_attn
                .forward(&h, &cos, &sin, &mask)
                .context(|| format!("layer {i}: self_attn"))?;
            cache.record(hooks, HookPoint::AttnOut(i), &attn);
            x = residual(&x, &attn).context(|| format!("layer {i}: attention residual"))?;
            let h = block
                .post_attention_layernorm
                .forward(&x)
                .context(|| format!("layer {i}: post_attention_layernorm"))?;
            let mlp = block
                .mlp
                .forward(&h)
                .context(|| format!("layer {i}: mlp"))?;
            cache.record(hooks, HookPoint::MlpOut(i), &mlp);
            x = residual(&x, &mlp).context(|| format!("layer {i}: mlp residual"))?;
            cache.record(hooks, HookPoint::ResidPost(i), &x);
        }

        let h = self.norm.forward(&x).context(|| "model.norm".to_string())?;
        cache.record(hooks, HookPoint::LnFinal, &h);
        let logits = if hooks.wants_logits() {
            Some(self.logits(&h).context(|| "lm_head".to_string())?)
        } else {
            None
        };
        Ok(ForwardOutput { cache, logits })
    }
}

/// Every parameter [`Llama::load`] reads, in HF's `named_parameters` order, with HF's
/// `LlamaPreTrainedModel._init_weights` rules: Normal(initializer_range) for linear and embedding
/// weights, zero biases, unit RMSNorm gains. (HF also zeroes the `pad_token_id` row of the
/// embedding; the padding row is never read by replens, which masks padding.)
pub fn param_specs(cfg: &Config) -> Vec<ParamSpec> {
    let std = Init::Normal(cfg.initializer_range);
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.n_kv_heads() * cfg.head_dim(),
    );
    let mut specs = vec![ParamSpec::new(
        "model.embed_tokens.weight",
        &[cfg.vocab_size, d],
        std,
    )];
    let linear = |specs: &mut Vec<ParamSpec>, name: String, out: usize, inp: usize, bias: bool| {
        specs.push(ParamSpec::new(format!("{name}.weight"), &[out, inp], std));
        if bias {
            specs.push(ParamSpec::new(format!("{name}.bias"), &[out], Init::Zeros));
        }
    };
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        linear(
            &mut specs,
            format!("{p}.self_attn.q_proj"),
            q,
            d,
            cfg.qkv_bias(),
        );
        linear(
            &mut specs,
            format!("{p}.self_attn.k_proj"),
            kv,
            d,
            cfg.qkv_bias(),
        );
        linear(
            &mut specs,
            format!("{p}.self_attn.v_proj"),
            kv,
            d,
            cfg.qkv_bias(),
        );
        linear(
            &mut specs,
            format!("{p}.self_attn.o_proj"),
            d,
            q,
            cfg.o_bias(),
        );
        linear(&mut specs, format!("{p}.mlp.gate_proj"), i, d, cfg.mlp_bias);
        linear(&mut specs, format!("{p}.mlp.up_proj"), i, d, cfg.mlp_bias);
        linear(&mut specs, format!("{p}.mlp.down_proj"), d, i, cfg.mlp_bias);
        specs.push(ParamSpec::new(
            format!("{p}.input_layernorm.weight"),
            &[d],
            Init::Ones,
        ));
        specs.push(ParamSpec::new(
            format!("{p}.post_attention_layernorm.weight"),
            &[d],
            Init::Ones,
        ));
    }
    specs.push(ParamSpec::new("model.norm.weight", &[d], Init::Ones));
    if !cfg.tie_word_embeddings {
        specs.push(ParamSpec::new("lm_head.weight", &[cfg.vocab_size, d], std));
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            r#"{{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2 {extra}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    /// The fused attention kernel against the candle ops it replaces, which run when autograd
    /// tracks an input: grouped and plain heads, one position, padded batches, large scores.
    #[test]
    fn fused_attention_equals_the_candle_ops_bit_for_bit() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (b, t, heads, kv, hd) in [
            (2, 128, 9, 3, 64),
            (3, 17, 4, 2, 8),
            (1, 1, 9, 3, 64),
            (2, 5, 2, 2, 6),
        ] {
            let q = (Tensor::randn(0f32, 1., (b, t, heads * hd), &dev)? * 4.0)?;
            let k = (Tensor::randn(0f32, 1., (b, t, kv * hd), &dev)? * 4.0)?;
            let v = Tensor::randn(0f32, 1., (b, t, kv * hd), &dev)?;
            let angles = Tensor::rand(0f32, 100., (t, hd / 2), &dev)?;
            let (cos, sin) = (angles.cos()?, angles.sin()?);
            // causal, the last `row` keys of sequence `row` padding, the diagonal always open
            let mut mask = vec![f32::NEG_INFINITY; b * t * t];
            for row in 0..b {
                for i in 0..t {
                    for j in 0..=i {
                        if j == i || j + row < t {
                            mask[(row * t + i) * t + j] = 0.0;
                        }
                    }
                }
            }
            let mask = Tensor::from_vec(mask, (b, 1, t, t), &dev)?;
            let fused = attend(&q, &k, &v, &cos, &sin, &mask, heads, kv)?;
            let fast = super::super::fast::rotary_attention(
                &q,
                &k,
                &v,
                &cos,
                &sin,
                &mask,
                1.0 / (hd as f64).sqrt(),
                heads,
                kv,
            )?;
            assert!(
                fast.is_some(),
                "the kernel applies to untracked f32 tensors"
            );
            let tracked = candle_core::Var::from_tensor(&q)?;
            let generic = attend(tracked.as_tensor(), &k, &v, &cos, &sin, &mask, heads, kv)?;
            assert_eq!(fused.dims(), [b, t, heads * hd]);
            let (a, g) = (
                fused.flatten_all()?.to_vec1::<f32>()?,
                generic.flatten_all()?.to_vec1::<f32>()?,
            );
            let differ = a
                .iter()
                .zip(&g)
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "{b}x{t} heads {heads}/{kv} hd {hd}: {differ} values differ"
            );
        }
        Ok(())
    }

    #[test]
    fn hf_defaults() {
        let c = cfg("");
        assert_eq!(c.n_kv_heads(), 2);
        assert_eq!(c.head_dim(), 4);
        assert_eq!(c.rope_theta(), 10000.0);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert!(!c.tie_word_embeddings && !c.qkv_bias() && c.window(0).is_none());
        let c = cfg(
            r#", "rope_parameters": {"rope_theta": 5.0, "rope_type": "default"}, "rope_theta": 7.0"#,
        );
        assert_eq!(c.rope_theta(), 5.0);
        let c = cfg(r#", "rope_theta": 7.0, "rope_scaling": null"#);
        assert_eq!(c.rope_theta(), 7.0);
    }

    #[test]
    fn sliding_windows_follow_hf() {
        assert_eq!(cfg(r#", "model_type": "mistral""#).window(0), Some(4096));
        assert_eq!(
            cfg(r#", "model_type": "mistral", "sliding_window": null"#).window(0),
            None
        );
        assert_eq!(
            cfg(r#", "model_type": "mistral", "sliding_window": 3"#).window(1),
            Some(3)
        );
        assert_eq!(
            cfg(r#", "model_type": "qwen2", "sliding_window": 3"#).window(1),
            None
        );
        let q = cfg(
            r#", "model_type": "qwen2", "sliding_window": 3, "use_sliding_window": true, "max_window_layers": 1"#,
        );
        assert_eq!((q.window(0), q.window(1)), (None, Some(3)));
        assert!(q.qkv_bias() && !q.o_bias());
        let q = cfg(r#", "architectures": ["Qwen2ForCausalLM"], "attention_bias": true"#);
        assert!(q.qkv_bias() && !q.o_bias());
    }

    #[test]
    fn unsupported_rope_and_activation_are_errors() {
        let c = cfg(r#", "rope_scaling": {"type": "yarn", "factor": 4.0}"#);
        assert!(c.validate().unwrap_err().to_string().contains("yarn"));
        let c = cfg(r#", "hidden_act": "gelu""#);
        assert!(c.validate().unwrap_err().to_string().contains("gelu"));
        let c = cfg(r#", "num_key_value_heads": 3"#);
        assert!(c.validate().is_err());
    }

    #[test]
    fn param_specs_load_round_trip() {
        for extra in [
            "",
            r#", "tie_word_embeddings": true, "num_key_value_heads": 1"#,
            r#", "model_type": "qwen2", "attention_bias": true"#,
        ] {
            let c = cfg(extra);
            let specs = param_specs(&c);
            let w = crate::model::init::random_weights(&specs, 3, &Device::Cpu).unwrap();
            let n = w.len();
            let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
            let model = Llama::load(&c, vb).unwrap();
            let ids = Tensor::new(&[[1u32, 2, 3], [4, 5, 0]], &Device::Cpu).unwrap();
            let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
            let out = model.forward(&ids, &mask, &HookSpec::all()).unwrap();
            assert_eq!(out.logits.unwrap().dims(), &[2, 3, 10]);
            assert_eq!(out.cache.len(), 2 + 4 * 2, "{extra}");
            assert!(n >= 2 + 9 * 2);
        }
    }

    #[test]
    fn bad_ids_and_missing_tensors_are_errors() {
        let c = cfg("");
        let w = crate::model::init::random_weights(&param_specs(&c), 3, &Device::Cpu).unwrap();
        let mut missing = w.clone();
        missing.remove("model.layers.1.mlp.up_proj.weight");
        let vb = VarBuilder::from_tensors(missing, DType::F32, &Device::Cpu);
        let err = Llama::load(&c, vb).err().unwrap().to_string();
        assert!(err.contains("layer 1") && err.contains("up_proj"), "{err}");
        let model = Llama::load(&c, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap();
        let ids = Tensor::new(&[[1u32, 99]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
        let err = model
            .forward(&ids, &mask, &HookSpec::none())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("99"), "{err}");
    }
}
