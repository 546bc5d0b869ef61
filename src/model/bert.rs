//! BERT-family encoders: BERT, MiniLM (a BERT with small dims, e.g. `all-MiniLM-L6-v2`) and
//! RoBERTa, ported from Hugging Face `modeling_bert.py` / `modeling_roberta.py` with
//! TransformerLens `HookedEncoder` hook points.
//!
//! The network is a post-LN encoder:
//!
//! ```text
//! x₀  = LN_emb(word[id] + token_type[0] + position[p])            hook_embed = resid_pre(0)
//! a_i = Wo · softmax(q kᵀ / √d_head + mask) v                     blocks.i.hook_attn_out
//! h_i = LN_attn(x_i + a_i)
//! m_i = W2 · act(W1 · h_i)                                        blocks.i.hook_mlp_out
//! x_{i+1} = LN_out(h_i + m_i)                                     blocks.i.hook_resid_post
//! ```
//!
//! There is no final norm (the last block already ends in a LayerNorm), so
//! `ln_final.hook_normalized` does not exist here; asking for it explicitly is an error.
//! Encoders have no language-model head: `logits` is `None`.
//!
//! Arithmetic is f64 by default (see the `COMPUTE` constant for why); recorded hooks are f32
//! `(batch, seq, d)`. [`Bert::load_with_dtype`] builds an f32 twin for training, where speed
//! matters more than bit-level agreement with HF float64; for inference, [`crate::model::Model`]
//! loads one with `LoadOptions::default().encoder_precision(Precision::F32)` (1.4–1.75× faster
//! on MiniLM, hidden states within 1.83e-4 of HF, tested).
//!
//! Adapters: [`Bert::encode`] adds an optional per-linear-layer term `delta(x)` to chosen
//! projections (`y = x Wᵀ + b + delta(x)`; LoRA in [`crate::train::lora`]) and returns the last
//! hidden state in compute precision, differentiable with respect to any `Var` the adapter uses.
//! The base weights are plain tensors, so they never receive updates.

use candle_core::{DType, IndexOp, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNormConfig, VarBuilder};
use serde::Deserialize;

use super::init::{Init, ParamSpec};
use super::{ForwardOutput, Transformer};
use crate::error::{Context, Error, Result};
use crate::hooks::{ActivationCache, HookPoint, HookSpec};

/// The MLP non-linearity, spelled as in HF `ACT2FN`.
/// Token ids and attention mask of a batch, one row per text.
type IdsAndMask = (Vec<Vec<u32>>, Vec<Vec<u32>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// HF `"gelu"`: the exact erf form, `x·Φ(x)` (BERT, MiniLM, RoBERTa).
    #[default]
    #[serde(alias = "gelu_python")]
    Gelu,
    /// HF `"gelu_new"`: the tanh approximation of GPT-2 (also `gelu_pytorch_tanh`, `gelu_fast`).
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
    #[serde(alias = "swish")]
    Silu,
}

impl HiddenAct {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            HiddenAct::Gelu => x.gelu_erf(),
            HiddenAct::GeluNew => x.gelu(),
            HiddenAct::Relu => x.relu(),
            HiddenAct::Silu => x.silu(),
        }
    }
}

/// `BertConfig` / `RobertaConfig` from `config.json`. Defaults are HF's `BertConfig` defaults
/// (RoBERTa checkpoints always write `vocab_size`; its `pad_token_id` default of 1 is handled by
/// [`Config::pad_token_id`]).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_num_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default)]
    pub hidden_act: HiddenAct,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// `None` in the JSON means the family default: 0 for BERT, 1 for RoBERTa.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Only `"absolute"` (learned position table) is supported; relative variants are refused
    /// at load time rather than silently computed wrongly.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// Set by detection from `model_type`, not read from JSON.
    #[serde(skip)]
    pub is_roberta: bool,
}

fn default_vocab_size() -> usize {
    30522
}
fn default_hidden_size() -> usize {
    768
}
fn default_num_layers() -> usize {
    12
}
fn default_num_heads() -> usize {
    12
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_max_position_embeddings() -> usize {
    512
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}

impl Config {
    /// The padding id: the config's, else HF's family default (BERT 0, RoBERTa 1). RoBERTa also
    /// uses it as the offset of its position ids.
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
            .unwrap_or(if self.is_roberta { 1 } else { 0 })
    }

    /// Longest sequence the position table allows. RoBERTa numbers real tokens from
    /// `pad_token_id + 1` (HF `create_position_ids_from_input_ids`), so it loses that many slots.
    pub fn max_sequence_len(&self) -> usize {
        if self.is_roberta {
            self.max_position_embeddings
                .saturating_sub(self.pad_token_id() as usize + 1)
        } else {
            self.max_position_embeddings
        }
    }

    fn head_dim(&self) -> Result<usize> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::InvalidInput(format!(
                "config.json: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(self.hidden_size / self.num_attention_heads)
    }
}

/// Precision of all arithmetic. Weights (except the embedding tables, whose looked-up rows are
/// converted exactly) are converted once at load; hooks are returned as f32.
///
/// Why f64: BERT-family MLPs write a few outlier features of magnitude ~10² (all-MiniLM-L6-v2:
/// |mlp_out| ≈ 190, where one f32 ulp is 1.5e-5). There, f32 GEMMs that sum in another order
/// than PyTorch's BLAS differ from HF float32 by up to 1.8e-4 even from identical inputs, and HF
/// float32 itself is up to 1.95e-4 away from HF float64 on a padded batch. Computing in f64 and
/// rounding once matches HF float64 to 1e-6 and HF float32 (single texts) to 7.6e-5, and makes
/// padded and unpadded runs bit-identical. Cost: about twice the f32 time (measured 13.7 s vs
/// 6.9 s for 2,624 MiniLM tokens on a busy 2-core machine).
const COMPUTE: DType = DType::F64;

/// A `nn.Linear` with the weight stored transposed, `(in, out)`, in compute precision
/// ([`COMPUTE`] unless built by [`Bert::load_with_dtype`]).
#[derive(Clone)]
struct Dense {
    w_t: Tensor,
    b: Tensor,
}

impl Dense {
    /// Reads `{vb}.weight` `(out, in)` and `{vb}.bias` `(out,)`, checking shapes.
    fn load(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let l = linear(in_dim, out_dim, vb)?;
        let b = match l.bias() {
            Some(b) => b.to_dtype(dtype)?,
            None => candle_core::bail!("BERT linear layers have a bias"),
        };
        Ok(Self {
            w_t: l.weight().t()?.to_dtype(dtype)?.contiguous()?,
            b,
        })
    }

    /// `(n, in)` → `(n, out)`. The bias goes through [`super::fast::add_bias`] where it applies
    /// (the same values as `broadcast_add`, without candle's element-wise thread pool).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let xw = super::fast::linear_matmul(x, &self.w_t)?;
        match super::fast::add_bias(&xw, &self.b)? {
            Some(y) => Ok(y),
            None => xw.broadcast_add(&self.b),
        }
    }

    /// [`forward`](Self::forward) plus the adapter's term for this layer, if it has one. The base
    /// output is computed exactly as without an adapter, so a zero term changes no bit. In
    /// training passes the product goes through [`FrozenMatmul`], whose backward skips the
    /// gradient of the frozen weight.
    fn forward_adapted(
        &self,
        x: &Tensor,
        site: Option<(&dyn LinearAdapter, usize, BertLinear, bool)>,
    ) -> candle_core::Result<Tensor> {
        let y = match site {
            Some((_, _, _, true)) => x
                .contiguous()?
                .apply_op1(FrozenMatmul {
                    w_t: self.w_t.clone(),
                })?
                .broadcast_add(&self.b)?,
            _ => self.forward(x)?,
        };
        match site {
            Some((adapter, layer, which, train)) => match adapter.delta(layer, which, x, train)? {
                Some(delta) => y + delta,
                None => Ok(y),
            },
            None => Ok(y),
        }
    }
}

/// `x ↦ x · w_t` for a weight that never trains. candle's matmul backward always computes the
/// gradient of both factors; for a frozen weight that is a wasted GEMM as large as the forward
/// one. This op returns only `∂L/∂x = g · w_tᵀ` (measured: 15% less CPU time per MiniLM LoRA
/// step, identical gradients). The forward result is [`Dense::forward`]'s product, bit for bit
/// `x.matmul(w_t)`. CPU only, like the rest of the crate (no `cuda_fwd`).
struct FrozenMatmul {
    w_t: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: input must be contiguous")
        };
        let device = candle_core::Device::Cpu;
        let x = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], layout.shape(), &device)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], layout.shape(), &device)?,
            _ => candle_core::bail!("frozen-matmul: only f32 and f64 are supported"),
        };
        let y = super::fast::linear_matmul(&x, &self.w_t)?;
        let shape = y.shape().clone();
        let flat = y.flatten_all()?;
        let out = match y.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1()?),
            _ => CpuStorage::F64(flat.to_vec1()?),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w_t.t()?)?))
    }
}

/// The linear layers of a BERT block, by their HF module path inside `encoder.layer.{i}`.
/// These are the names PEFT's `target_modules` match against (suffix match: `"dense"` hits the
/// three `*.dense` layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BertLinear {
    /// `attention.self.query`, `(d, d)`.
    Query,
    /// `attention.self.key`, `(d, d)`.
    Key,
    /// `attention.self.value`, `(d, d)`.
    Value,
    /// `attention.output.dense`, `(d, d)`.
    AttentionOutput,
    /// `intermediate.dense`, `(d_ff, d)`.
    Intermediate,
    /// `output.dense`, `(d, d_ff)`.
    Output,
}

impl BertLinear {
    /// All six, in the order a block applies them.
    pub const ALL: [BertLinear; 6] = [
        BertLinear::Query,
        BertLinear::Key,
        BertLinear::Value,
        BertLinear::AttentionOutput,
        BertLinear::Intermediate,
        BertLinear::Output,
    ];

    /// HF module path inside `encoder.layer.{i}`, e.g. `attention.self.query`.
    pub fn module_path(self) -> &'static str {
        match self {
            BertLinear::Query => "attention.self.query",
            BertLinear::Key => "attention.self.key",
            BertLinear::Value => "attention.self.value",
            BertLinear::AttentionOutput => "attention.output.dense",
            BertLinear::Intermediate => "intermediate.dense",
            BertLinear::Output => "output.dense",
        }
    }
}

/// A term added to the output of chosen linear layers: `y = x Wᵀ + b + delta(x)`.
///
/// `x` is the layer's input `(n, in)` in the encoder's compute precision; the returned tensor
/// must be `(n, out)` in the same precision. `None` leaves the layer as it is. `train` is true in
/// training passes (for dropout).
pub trait LinearAdapter {
    fn delta(
        &self,
        layer: usize,
        which: BertLinear,
        x: &Tensor,
        train: bool,
    ) -> candle_core::Result<Option<Tensor>>;
}

/// Softmax over the last dimension built from primitive ops, so that gradients flow through it
/// (candle's fused `softmax_last_dim` has no backward). The row maximum is subtracted for
/// stability and detached: softmax is invariant to it, so its gradient contributes nothing.
fn softmax_differentiable(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// HF `nn.LayerNorm` (biased variance, eps inside the square root) in compute precision
/// (candle's fused layer norm has no f64 kernel and no backward).
#[derive(Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    /// Reads `weight`/`bias` (or the TF-era `gamma`/`beta`) of size `hidden_size`.
    fn load(cfg: &Config, vb: VarBuilder, dtype: DType) -> candle_core::Result<Self> {
        let ln = layer_norm(
            cfg.hidden_size,
            LayerNormConfig::from(cfg.layer_norm_eps),
            vb,
        )?;
        let bias = match ln.bias() {
            Some(b) => b.to_dtype(dtype)?,
            None => candle_core::bail!("BERT LayerNorms have a bias"),
        };
        Ok(Self {
            weight: ln.weight().to_dtype(dtype)?,
            bias,
            eps: cfg.layer_norm_eps,
        })
    }

    /// Normalise the last dimension.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_sum(x, None)
    }

    /// Normalise `x + residual` (or `x`) over the last dimension. CPU inference (f64 or f32)
    /// runs as one fused kernel computing the same operations ([`super::fast::add_layer_norm`]).
    fn forward_sum(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        if let Some(y) =
            super::fast::add_layer_norm(x, residual, &self.weight, &self.bias, self.eps)?
        {
            return Ok(y);
        }
        match residual {
            Some(r) => self.forward_generic(&(x + r)?),
            None => self.forward_generic(x),
        }
    }

    fn forward_generic(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// `BertEmbeddings` / `RobertaEmbeddings`: word + token type (always type 0) + learned position,
/// then LayerNorm. Dropout is the identity at inference. Tables stay f32 (the largest tensors);
/// looked-up rows are converted exactly to the compute precision.
#[derive(Clone)]
struct Embeddings {
    word: Embedding,
    position: Embedding,
    /// Row 0 of `token_type_embeddings`, `(hidden,)`: HF's default `token_type_ids` are all zero.
    token_type0: Tensor,
    norm: Norm,
}

/// `BertSelfAttention` + `BertSelfOutput.dense` and its LayerNorm.
#[derive(Clone)]
struct Attention {
    query: Dense,
    key: Dense,
    value: Dense,
    out: Dense,
    norm: Norm,
}

/// `BertLayer`: attention, `BertIntermediate` (dense + act), `BertOutput` (dense + LayerNorm).
#[derive(Clone)]
struct Layer {
    attention: Attention,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

impl Layer {
    /// `act(h · W + b)` of `BertIntermediate`. Without an adapter, CPU inference (f64 or f32)
    /// with the exact GELU adds the bias and applies the GELU in one fused kernel
    /// ([`super::fast::bias_gelu`]), computing the same values as the separate ops.
    fn intermediate_activation(
        &self,
        h: &Tensor,
        act: HiddenAct,
        pass: Pass,
    ) -> candle_core::Result<Tensor> {
        let dense = &self.intermediate;
        if pass.adapter.is_none() && matches!(act, HiddenAct::Gelu) {
            let xw = h.matmul(&dense.w_t)?;
            if let Some(y) = super::fast::bias_gelu(&xw, &dense.b)? {
                return Ok(y);
            }
            return act.apply(&xw.broadcast_add(&dense.b)?);
        }
        act.apply(&dense.forward_adapted(h, pass.site(BertLinear::Intermediate))?)
    }

    fn dense(&self, which: BertLinear) -> &Dense {
        match which {
            BertLinear::Query => &self.attention.query,
            BertLinear::Key => &self.attention.key,
            BertLinear::Value => &self.attention.value,
            BertLinear::AttentionOutput => &self.attention.out,
            BertLinear::Intermediate => &self.intermediate,
            BertLinear::Output => &self.output,
        }
    }

    fn dense_mut(&mut self, which: BertLinear) -> &mut Dense {
        match which {
            BertLinear::Query => &mut self.attention.query,
            BertLinear::Key => &mut self.attention.key,
            BertLinear::Value => &mut self.attention.value,
            BertLinear::AttentionOutput => &mut self.attention.out,
            BertLinear::Intermediate => &mut self.intermediate,
            BertLinear::Output => &mut self.output,
        }
    }
}

/// A BERT-family encoder with hook points. Cloning is cheap (tensors are shared).
#[derive(Clone)]
pub struct Bert {
    cfg: Config,
    head_dim: usize,
    /// Compute precision: [`COMPUTE`] (f64) from [`Bert::load`], or f32 for training.
    dtype: DType,
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

/// Checkpoints name tensors with or without the task model's prefix: a bare `BertModel`
/// (`embeddings.…`, e.g. all-MiniLM-L6-v2), `BertFor*` (`bert.…`) or `RobertaFor*`
/// (`roberta.…`). Heads (`pooler`, `lm_head`, `cls`) are never read.
fn base_prefix(vb: &VarBuilder) -> Result<Option<&'static str>> {
    const PROBE: &str = "embeddings.word_embeddings.weight";
    if vb.contains_tensor(PROBE) {
        return Ok(None);
    }
    for prefix in ["bert", "roberta"] {
        if vb.contains_tensor(&format!("{prefix}.{PROBE}")) {
            return Ok(Some(prefix));
        }
    }
    Err(Error::InvalidInput(format!(
        "cannot find tensor {PROBE} (nor bert.{PROBE} / roberta.{PROBE}): the weights are not a BERT/RoBERTa checkpoint"
    )))
}

impl Bert {
    /// Read weights named as in [`param_specs`] (optionally under `bert.` / `roberta.`).
    /// A missing tensor or a shape that disagrees with `config.json` is an error naming the tensor.
    /// Computes in f64 (see the module docs for why).
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::load_with_dtype(cfg, vb, COMPUTE)
    }

    /// [`load`](Self::load) with another compute precision: `DType::F64` (the default; matches
    /// HF float64 to 1e-6) or `DType::F32` (1.6–1.9× faster on MiniLM; its GEMMs differ from
    /// HF's by up to ~2e-4 at MiniLM's outlier MLP features, |x| ≈ 190). Other dtypes are refused.
    pub fn load_with_dtype(cfg: &Config, vb: VarBuilder, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::InvalidInput(format!(
                "Bert::load_with_dtype: compute dtype must be F32 or F64, got {dtype:?}"
            )));
        }
        let head_dim = cfg.head_dim()?;
        if cfg.position_embedding_type != "absolute" {
            return Err(Error::InvalidInput(format!(
                "config.json: position_embedding_type '{}' is not supported (only 'absolute')",
                cfg.position_embedding_type
            )));
        }
        if cfg.type_vocab_size == 0 {
            return Err(Error::InvalidInput(
                "config.json: type_vocab_size must be at least 1".into(),
            ));
        }
        let vb = match base_prefix(&vb)? {
            Some(p) => vb.pp(p),
            None => vb,
        };
        let d = cfg.hidden_size;

        let ve = vb.pp("embeddings");
        let word = embedding(cfg.vocab_size, d, ve.pp("word_embeddings"))
            .context(|| "embeddings.word_embeddings".to_string())?;
        let position = embedding(cfg.max_position_embeddings, d, ve.pp("position_embeddings"))
            .context(|| "embeddings.position_embeddings".to_string())?;
        let token_type = embedding(cfg.type_vocab_size, d, ve.pp("token_type_embeddings"))
            .context(|| "embeddings.token_type_embeddings".to_string())?;
        let token_type0 = token_type
            .embeddings()
            .i(0)
            .context(|| "embeddings.token_type_embeddings row 0".to_string())?;
        let norm_e = Norm::load(cfg, ve.pp("LayerNorm"), dtype)
            .context(|| "embeddings.LayerNorm".to_string())?;
        let embeddings = Embeddings {
            word,
            position,
            token_type0,
            norm: norm_e,
        };

        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vl = vb.pp(format!("encoder.layer.{i}"));
                let at = vl.pp("attention");
                let ctx = |what: &str| format!("layer {i}: {what}");
                let attention = Attention {
                    query: Dense::load(d, d, at.pp("self.query"), dtype)
                        .context(|| ctx("attention.self.query"))?,
                    key: Dense::load(d, d, at.pp("self.key"), dtype)
                        .context(|| ctx("attention.self.key"))?,
                    value: Dense::load(d, d, at.pp("self.value"), dtype)
                        .context(|| ctx("attention.self.value"))?,
                    out: Dense::load(d, d, at.pp("output.dense"), dtype)
                        .context(|| ctx("attention.output.dense"))?,
                    norm: Norm::load(cfg, at.pp("output.LayerNorm"), dtype)
                        .context(|| ctx("attention.output.LayerNorm"))?,
                };
                Ok(Layer {
                    attention,
                    intermediate: Dense::load(
                        d,
                        cfg.intermediate_size,
                        vl.pp("intermediate.dense"),
                        dtype,
                    )
                    .context(|| ctx("intermediate.dense"))?,
                    output: Dense::load(cfg.intermediate_size, d, vl.pp("output.dense"), dtype)
                        .context(|| ctx("output.dense"))?,
                    output_norm: Norm::load(cfg, vl.pp("output.LayerNorm"), dtype)
                        .context(|| ctx("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Self {
            cfg: cfg.clone(),
            head_dim,
            dtype,
            embeddings,
            layers,
        })
    }

    /// Position ids and the additive attention bias, computed on the host from the ids and mask.
    ///
    /// * BERT: `0..t` for every row (HF's `position_ids` buffer); with right padding that is the
    ///   same for real tokens as running each text alone.
    /// * RoBERTa: HF `create_position_ids_from_input_ids` — tokens that are not padding are
    ///   numbered `pad_token_id + 1, + 2, …`, padding gets `pad_token_id`. A token counts as
    ///   padding if its mask is 0 (whatever id the batcher padded with) or, as in HF, its id is
    ///   the pad id.
    /// * Bias: 0 on real keys, `f32::MIN` on padding keys, as HF's `(1 - mask) * finfo.min`. A
    ///   finite minimum (not −∞) keeps a fully padded row free of NaN.
    fn positions_and_bias(&self, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> (Vec<u32>, Vec<f32>) {
        let pad = self.cfg.pad_token_id();
        let mut positions = Vec::with_capacity(ids.len() * ids.first().map_or(0, Vec::len));
        let mut bias = Vec::with_capacity(positions.capacity());
        for (row_ids, row_mask) in ids.iter().zip(mask) {
            let mut count = 0u32;
            for (t, (&id, &m)) in row_ids.iter().zip(row_mask).enumerate() {
                if self.cfg.is_roberta {
                    if m != 0 && id != pad {
                        count += 1;
                        positions.push(pad + count);
                    } else {
                        positions.push(pad);
                    }
                } else {
                    positions.push(t as u32);
                }
                bias.push(if m != 0 { 0.0 } else { f32::MIN });
            }
        }
        (positions, bias)
    }

    fn check_inputs(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<IdsAndMask> {
        let (b, t) = input_ids.dims2().context(|| {
            format!(
                "input_ids must be (batch, seq), got {:?}",
                input_ids.shape()
            )
        })?;
        let mask_dims = attention_mask.dims();
        if mask_dims != [b, t] {
            return Err(Error::InvalidInput(format!(
                "attention_mask has shape {mask_dims:?} but input_ids has ({b}, {t})"
            )));
        }
        if b == 0 || t == 0 {
            return Err(Error::InvalidInput(format!(
                "empty batch: input_ids has shape ({b}, {t})"
            )));
        }
        let max = self.cfg.max_sequence_len();
        if t > max {
            return Err(Error::InvalidInput(format!(
                "sequence length {t} exceeds the model's {max} positions (max_position_embeddings {}); truncate the input",
                self.cfg.max_position_embeddings
            )));
        }
        let ids: Vec<Vec<u32>> = input_ids
            .to_dtype(DType::U32)
            .and_then(|x| x.to_vec2())
            .context(|| "input_ids".to_string())?;
        let mask: Vec<Vec<u32>> = attention_mask
            .to_dtype(DType::U32)
            .and_then(|x| x.to_vec2())
            .context(|| "attention_mask".to_string())?;
        if let Some((row, &id)) = ids.iter().enumerate().find_map(|(r, row)| {
            row.iter()
                .find(|&&id| id as usize >= self.cfg.vocab_size)
                .map(|id| (r, id))
        }) {
            return Err(Error::InvalidInput(format!(
                "token id {id} in batch row {row} is outside the vocabulary (vocab_size {})",
                self.cfg.vocab_size
            )));
        }
        Ok((ids, mask))
    }
}

/// `HookSpec::all()` lists `ln_final` as part of "everything"; for an encoder without a final
/// norm that means "everything that exists". Only an explicit request for it is an error.
/// (A spec that wants every per-block hook wants `ResidPre` of any index, which no explicit
/// list realistically contains for `usize::MAX`.)
fn explicitly_wants_ln_final(hooks: &HookSpec) -> bool {
    hooks.wants(HookPoint::LnFinal) && !hooks.wants(HookPoint::ResidPre(usize::MAX))
}

/// Keep `x` (`(b·t, d)`, [`COMPUTE`]) under `point` as `(b, t, d)` f32 if the spec asks for it.
fn record(
    cache: &mut ActivationCache,
    hooks: &HookSpec,
    point: HookPoint,
    x: &Tensor,
    (b, t): (usize, usize),
) -> candle_core::Result<()> {
    if hooks.wants(point) {
        let d = x.dim(D::Minus1)?;
        cache.insert(point, x.reshape((b, t, d))?.to_dtype(DType::F32)?);
    }
    Ok(())
}

/// Where an encoder pass is: the adapter (if any), the layer index, and whether it trains.
#[derive(Clone, Copy)]
struct Pass<'a> {
    adapter: Option<&'a dyn LinearAdapter>,
    layer: usize,
    train: bool,
}

impl<'a> Pass<'a> {
    fn site(&self, which: BertLinear) -> Option<(&'a dyn LinearAdapter, usize, BertLinear, bool)> {
        self.adapter.map(|a| (a, self.layer, which, self.train))
    }
}

impl Attention {
    /// Multi-head self-attention up to and including the output projection (`hook_attn_out`).
    /// `x`: `(b·t, d)`; `bias`: `(b, 1, 1, t)` additive key mask.
    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        (b, t): (usize, usize),
        n_heads: usize,
        head_dim: usize,
        pass: Pass,
    ) -> candle_core::Result<Tensor> {
        let q = self
            .query
            .forward_adapted(x, pass.site(BertLinear::Query))?;
        let k = self.key.forward_adapted(x, pass.site(BertLinear::Key))?;
        let v = self
            .value
            .forward_adapted(x, pass.site(BertLinear::Value))?;
        // HF eager_attention_forward: (q · kᵀ) * head_dim^-0.5, + mask, softmax.
        let scale = (head_dim as f64).powf(-0.5);
        // Inference on plain CPU tensors: one fused kernel per (sequence, head), the same values
        // as the ops (test). Training passes keep the ops (see `attention_ops`).
        let fused = if pass.train {
            None
        } else {
            super::fast::encoder_attention(&q, &k, &v, bias, scale, n_heads)?
        };
        let ctx = match fused {
            Some(ctx) => ctx,
            None => attention_ops(&q, &k, &v, bias, scale, (b, t), n_heads, pass.train)?,
        };
        self.out
            .forward_adapted(&ctx, pass.site(BertLinear::AttentionOutput))
    }
}

/// `softmax(q kᵀ · scale + bias) v` per head from the projections `q`, `k`, `v` `(b·t, d)`,
/// as candle ops (the f64 / f32 softmax kernel where it applies): what training passes and
/// tensors the fused kernel does not take run.
#[allow(clippy::too_many_arguments)]
fn attention_ops(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    (b, t): (usize, usize),
    n_heads: usize,
    train: bool,
) -> candle_core::Result<Tensor> {
    let d = q.dim(1)?;
    let head_dim = d / n_heads;
    let split = |y: &Tensor| -> candle_core::Result<Tensor> {
        y.reshape((b, t, n_heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let raw = super::fast::matmul(&q, &k.t()?)?;
    // A training pass in f32 (LoRA's default) keeps the differentiable softmax even where
    // nothing is tracked yet, as before the f32 kernel existed: the two differ by a few ulp,
    // and the fine-tuning results are pinned by tests and notebooks.
    let fused = if train && raw.dtype() == DType::F32 {
        None
    } else {
        super::fast::scaled_masked_softmax(&raw, bias, scale)?
    };
    let probs = match fused {
        Some(probs) => probs,
        None => {
            let masked = (raw * scale)?.broadcast_add(bias)?;
            // Inference keeps the fused kernel (what the parity tests pin down); training
            // needs a softmax with a backward. The two agree to a few ulp.
            if train {
                softmax_differentiable(&masked)?
            } else {
                candle_nn::ops::softmax_last_dim(&masked)?
            }
        }
    };
    super::fast::matmul(&probs, &v)?
        .transpose(1, 2)?
        .reshape((b * t, d))
}

impl Bert {
    /// The config this encoder was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Compute precision (F64 from [`load`](Self::load), or what
    /// [`load_with_dtype`](Self::load_with_dtype) was given).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Weight `(out, in)` and bias `(out,)` of one linear layer, in compute precision.
    pub fn linear_weights(&self, layer: usize, which: BertLinear) -> Result<(Tensor, Tensor)> {
        let l = self.layers.get(layer).ok_or_else(|| {
            Error::InvalidInput(format!(
                "layer {layer} does not exist (the encoder has {} layers)",
                self.layers.len()
            ))
        })?;
        let dense = l.dense(which);
        Ok((dense.w_t.t()?.contiguous()?, dense.b.clone()))
    }

    /// A copy with `W ← W + ΔW` for each `(layer, linear, ΔW)`, `ΔW` shaped like `W` `(out, in)`
    /// (any float dtype; added in compute precision). This is how LoRA adapters are merged.
    pub fn with_weight_deltas(&self, deltas: &[(usize, BertLinear, Tensor)]) -> Result<Bert> {
        let mut merged = self.clone();
        for (layer, which, delta) in deltas {
            let n_layers = merged.layers.len();
            let l = merged.layers.get_mut(*layer).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "with_weight_deltas: layer {layer} does not exist (the encoder has {n_layers} layers)"
                ))
            })?;
            let dense = l.dense_mut(*which);
            let (in_dim, out_dim) = dense.w_t.dims2()?;
            if delta.dims() != [out_dim, in_dim] {
                return Err(Error::InvalidInput(format!(
                    "with_weight_deltas: delta for layer {layer} {} has shape {:?}, expected ({out_dim}, {in_dim})",
                    which.module_path(),
                    delta.dims()
                )));
            }
            let delta_t = delta.to_dtype(self.dtype)?.t()?;
            dense.w_t = (&dense.w_t + delta_t)?.contiguous()?;
        }
        Ok(merged)
    }

    /// The encoder pass behind [`Transformer::forward`], with an optional adapter. Returns the
    /// requested hooks (f32) and the last hidden state `(batch, seq, d)` in compute precision,
    /// differentiable with respect to the adapter's variables.
    ///
    /// `train` selects training behaviour: the adapter may apply dropout, and attention uses a
    /// softmax with a backward pass (the fused inference kernel has none). With `train = false`
    /// and no adapter (or an adapter whose terms are exactly zero) the states are bit-identical
    /// to [`Transformer::forward`]'s.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
        adapter: Option<&dyn LinearAdapter>,
        train: bool,
    ) -> Result<(ActivationCache, Tensor)> {
        if explicitly_wants_ln_final(hooks) {
            return Err(Error::UnknownHook {
                name: HookPoint::LnFinal.to_string(),
                reason: format!(
                    "BERT-family encoders have no final norm; use blocks.{}.hook_resid_post",
                    self.layers.len().saturating_sub(1)
                ),
            });
        }
        let (ids, mask) = self.check_inputs(input_ids, attention_mask)?;
        let bt = (ids.len(), ids.first().map_or(0, Vec::len));
        let (b, t) = bt;
        let device = input_ids.device();
        let (positions, bias) = self.positions_and_bias(&ids, &mask);
        let ids = Tensor::from_vec(ids.concat(), b * t, device)?;
        let positions = Tensor::from_vec(positions, b * t, device)?;
        let bias = Tensor::from_vec(bias, (b, 1, 1, t), device)?.to_dtype(self.dtype)?;

        let mut cache = ActivationCache::new();
        let e = &self.embeddings;
        // Same summation order as HF: (word + token_type) + position, then LayerNorm.
        let mut x = e
            .word
            .forward(&ids)
            .and_then(|w| w.broadcast_add(&e.token_type0))
            .and_then(|w| w + e.position.forward(&positions)?)
            .and_then(|w| w.to_dtype(self.dtype))
            .and_then(|w| e.norm.forward(&w))
            .context(|| "embeddings".to_string())?;
        record(&mut cache, hooks, HookPoint::Embed, &x, bt)?;

        let n_heads = self.cfg.num_attention_heads;
        for (i, layer) in self.layers.iter().enumerate() {
            let ctx = |what: &str| format!("layer {i}: {what}");
            let pass = Pass {
                adapter,
                layer: i,
                train,
            };
            record(&mut cache, hooks, HookPoint::ResidPre(i), &x, bt)?;
            let attn = layer
                .attention
                .forward(&x, &bias, bt, n_heads, self.head_dim, pass)
                .context(|| ctx("attention"))?;
            record(&mut cache, hooks, HookPoint::AttnOut(i), &attn, bt)?;
            let h = layer
                .attention
                .norm
                .forward_sum(&attn, Some(&x))
                .context(|| ctx("attention.output.LayerNorm"))?;
            let mlp = layer
                .intermediate_activation(&h, self.cfg.hidden_act, pass)
                .and_then(|y| {
                    layer
                        .output
                        .forward_adapted(&y, pass.site(BertLinear::Output))
                })
                .context(|| ctx("intermediate/output dense"))?;
            record(&mut cache, hooks, HookPoint::MlpOut(i), &mlp, bt)?;
            x = layer
                .output_norm
                .forward_sum(&mlp, Some(&h))
                .context(|| ctx("output.LayerNorm"))?;
            record(&mut cache, hooks, HookPoint::ResidPost(i), &x, bt)?;
        }
        let d = self.cfg.hidden_size;
        Ok((cache, x.reshape((b, t, d))?))
    }
}

impl Transformer for Bert {
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput> {
        let (cache, _) = self.encode(input_ids, attention_mask, hooks, None, false)?;
        Ok(ForwardOutput {
            cache,
            logits: None,
        })
    }
}

/// Every parameter [`Bert::load`] reads (unprefixed names, as a bare `BertModel` saves them), with
/// HF `BertPreTrainedModel._init_weights`: Normal(initializer_range) for Linear and Embedding
/// weights, zero biases, LayerNorm ones/zeros. Pooler and heads are not read, so not listed.
///
/// Deviation: HF also zeroes the `padding_idx` row of `word_embeddings` (and, for RoBERTa, of
/// `position_embeddings`); [`Init`] cannot express a zeroed row, so those rows are drawn like the
/// rest. This does not change any state of real text: the pad token only occurs as padding, which
/// the attention mask hides, and RoBERTa never gives a real token the pad position.
pub fn param_specs(cfg: &Config) -> Vec<ParamSpec> {
    let d = cfg.hidden_size;
    let std = Init::Normal(cfg.initializer_range);
    let mut specs = vec![
        ParamSpec::new(
            "embeddings.word_embeddings.weight",
            &[cfg.vocab_size, d],
            std,
        ),
        ParamSpec::new(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, d],
            std,
        ),
        ParamSpec::new(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, d],
            std,
        ),
        ParamSpec::new("embeddings.LayerNorm.weight", &[d], Init::Ones),
        ParamSpec::new("embeddings.LayerNorm.bias", &[d], Init::Zeros),
    ];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        let mut lin = |name: &str, out_dim: usize, in_dim: usize| {
            specs.push(ParamSpec::new(
                format!("{p}.{name}.weight"),
                &[out_dim, in_dim],
                std,
            ));
            specs.push(ParamSpec::new(
                format!("{p}.{name}.bias"),
                &[out_dim],
                Init::Zeros,
            ));
        };
        lin("attention.self.query", d, d);
        lin("attention.self.key", d, d);
        lin("attention.self.value", d, d);
        lin("attention.output.dense", d, d);
        lin("intermediate.dense", cfg.intermediate_size, d);
        lin("output.dense", d, cfg.intermediate_size);
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            specs.push(ParamSpec::new(format!("{p}.{ln}.weight"), &[d], Init::Ones));
            specs.push(ParamSpec::new(format!("{p}.{ln}.bias"), &[d], Init::Zeros));
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(is_roberta: bool) -> Config {
        let mut cfg: Config = serde_json::from_str(
            r#"{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 2,
                "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 20}"#,
        )
        .unwrap();
        cfg.is_roberta = is_roberta;
        cfg
    }

    /// Deterministic f64 values in about [-scale, scale], some large (BERT's outlier features).
    fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                if i % 97 == 0 {
                    200.0 * u
                } else {
                    2.0 * scale * u
                }
            })
            .collect()
    }

    fn tensor(v: Vec<f64>, shape: &[usize], dtype: DType) -> Tensor {
        Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .unwrap()
    }

    /// The bit patterns of `t`'s values, widened losslessly to f64.
    fn bits(t: &Tensor) -> Vec<u64> {
        t.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .unwrap()
            .into_iter()
            .map(f64::to_bits)
            .collect()
    }

    /// The fused attention kernel computes what the candle ops compute, to the bit, in f64 and
    /// f32: MiniLM's shape and a small odd one, one batch row and several, padded keys.
    #[test]
    fn fused_encoder_attention_equals_the_candle_ops_bit_for_bit() {
        for dtype in [DType::F64, DType::F32] {
            for (b, t, heads, hd) in [(3, 40, 12, 32), (1, 7, 2, 3), (2, 1, 4, 8)] {
                let d = heads * hd;
                let q = tensor(values(b * t * d, 11, 3.0), &[b * t, d], dtype);
                let k = tensor(values(b * t * d, 12, 3.0), &[b * t, d], dtype);
                let v = tensor(values(b * t * d, 13, 1.0), &[b * t, d], dtype);
                // row r masks its last r keys (HF's large negative padding bias), keeping one
                let mask: Vec<f64> = (0..b * t)
                    .map(|i| {
                        let (row, key) = (i / t, i % t);
                        if key > 0 && key + row >= t {
                            f64::from(f32::MIN)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let bias = tensor(mask, &[b, 1, 1, t], dtype);
                let scale = (hd as f64).powf(-0.5);
                let fused = super::super::fast::encoder_attention(&q, &k, &v, &bias, scale, heads)
                    .unwrap()
                    .expect("the kernel takes untracked CPU tensors");
                let ops = attention_ops(&q, &k, &v, &bias, scale, (b, t), heads, false).unwrap();
                assert_eq!(fused.dims(), ops.dims());
                assert_eq!(
                    bits(&fused),
                    bits(&ops),
                    "{dtype:?}: batch {b}, {t} tokens, {heads} heads of {hd}"
                );
            }
        }
    }

    /// The fused kernels of the inference pass compute what the candle ops computed, to the
    /// bit, in f64 and f32, below and above the kernels' parallel threshold, with widths that
    /// leave a tail after candle's 32-value f32 steps (d = 100) and none (d = 384).
    #[test]
    fn fused_encoder_kernels_equal_the_candle_ops_bit_for_bit() {
        for dtype in [DType::F64, DType::F32] {
            for (d, rows) in [(384, 3), (384, 200), (100, 7), (100, 500)] {
                let norm = Norm {
                    weight: tensor(values(d, 1, 1.0), &[d], dtype),
                    bias: tensor(values(d, 2, 0.1), &[d], dtype),
                    eps: 1e-12,
                };
                let x = tensor(values(rows * d, 3, 3.0), &[rows, d], dtype);
                let r = tensor(values(rows * d, 4, 3.0), &[rows, d], dtype);
                let fused = norm.forward_sum(&x, Some(&r)).unwrap();
                let direct = super::super::fast::add_layer_norm(
                    &x,
                    Some(&r),
                    &norm.weight,
                    &norm.bias,
                    1e-12,
                );
                assert!(
                    direct.unwrap().is_some(),
                    "the fused path is taken in {dtype:?}"
                );
                let generic = norm.forward_generic(&(&x + &r).unwrap()).unwrap();
                let what = format!("{dtype:?}, d {d}, {rows} rows");
                assert_eq!(bits(&fused), bits(&generic), "add + LayerNorm, {what}");
                let fused = norm.forward(&x).unwrap();
                assert_eq!(bits(&fused), bits(&norm.forward_generic(&x).unwrap()));

                let b = tensor(values(4 * d, 5, 0.5), &[4 * d], dtype);
                let xw = tensor(values(rows * 4 * d, 6, 4.0), &[rows, 4 * d], dtype);
                let fused = super::super::fast::bias_gelu(&xw, &b).unwrap().unwrap();
                let generic = xw.broadcast_add(&b).unwrap().gelu_erf().unwrap();
                assert_eq!(bits(&fused), bits(&generic), "bias + GELU, {what}");
                let fused = super::super::fast::add_bias(&xw, &b).unwrap().unwrap();
                let generic = xw.broadcast_add(&b).unwrap();
                assert_eq!(bits(&fused), bits(&generic), "bias, {what}");
            }
            // (batch 3, heads 4, t queries, t keys), the last keys of two rows masked as
            // padding; t = 40 leaves a tail after 32 values, t = 64 none.
            for t in [40, 64] {
                let (b, h) = (3, 4);
                let scores = tensor(values(b * h * t * t, 7, 30.0), &[b, h, t, t], dtype);
                let mask: Vec<f64> = (0..b * t)
                    .map(|i| {
                        if i % t >= t - 5 * (i / t) {
                            f64::from(f32::MIN)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mask = tensor(mask, &[b, 1, 1, t], dtype);
                let scale = 0.125;
                let fused = super::super::fast::scaled_masked_softmax(&scores, &mask, scale)
                    .unwrap()
                    .unwrap();
                let generic = candle_nn::ops::softmax_last_dim(
                    &(&scores * scale).unwrap().broadcast_add(&mask).unwrap(),
                )
                .unwrap();
                assert_eq!(
                    bits(&fused),
                    bits(&generic),
                    "scaled masked softmax, {dtype:?}, t {t}"
                );
            }
        }
    }

    #[test]
    fn config_defaults_follow_hf() {
        let cfg = tiny(false);
        assert_eq!(cfg.hidden_act, HiddenAct::Gelu);
        assert_eq!(cfg.type_vocab_size, 2);
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        assert_eq!(cfg.pad_token_id(), 0);
        assert_eq!(tiny(true).pad_token_id(), 1);
        assert_eq!(tiny(true).max_sequence_len(), 18);
        let act: HiddenAct = serde_json::from_str("\"gelu_new\"").unwrap();
        assert_eq!(act, HiddenAct::GeluNew);
        assert!(serde_json::from_str::<HiddenAct>("\"tanh\"").is_err());
    }

    #[test]
    fn roberta_positions_skip_padding_and_start_after_pad() {
        let specs = param_specs(&tiny(true));
        let w = super::super::init::random_weights(&specs, 1, &candle_core::Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(w, DType::F32, &candle_core::Device::Cpu);
        let m = Bert::load(&tiny(true), vb).unwrap();
        // Right-padded with id 0 (not the pad id 1): the mask decides.
        let (pos, bias) = m.positions_and_bias(
            &[vec![5, 6, 7], vec![5, 0, 0]],
            &[vec![1, 1, 1], vec![1, 0, 0]],
        );
        assert_eq!(pos, vec![2, 3, 4, 2, 1, 1]);
        assert_eq!(bias[..4], [0.0; 4]);
        assert_eq!(bias[4], f32::MIN);
    }

    #[test]
    fn bad_head_count_is_an_error() {
        let mut cfg = tiny(false);
        cfg.num_attention_heads = 3;
        let specs = param_specs(&cfg);
        let w = super::super::init::random_weights(&specs, 1, &candle_core::Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(w, DType::F32, &candle_core::Device::Cpu);
        let err = Bert::load(&cfg, vb).err().unwrap().to_string();
        assert!(err.contains("num_attention_heads 3"), "{err}");
    }
}
