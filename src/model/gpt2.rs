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
//! Besides HF's activations, the MLP may use TransformerLens' `solu_ln` ([`MlpActivation::SoluLn`],
//! SoLU followed by a LayerNorm with weights `transformer.h.{i}.mlp.ln.{weight,bias}`), for the
//! toy models of [`crate::train::toy`]. [`Transformer::forward_from`] continues a forward pass
//! from a given residual stream (for model stitching, [`crate::train::stitch`]).
//!
//! The fused LayerNorm and softmax kernels of candle have no backward pass, so when the weights
//! or the input residual stream are tracked for gradients (training), the forward pass switches
//! to composite ops that compute the same function with autograd support.
//!
//! This file also holds the pieces shared by the other causal decoders of the crate
//! ([`Activation`], `check_inputs`, `causal_padding_bias`, `attend`).

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::{Deserialize, Deserializer};

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

/// The HF `activation_function` name of [`MlpActivation::SoluLn`] (TransformerLens' `act_fn`).
pub const SOLU_LN: &str = "solu_ln";

/// The hidden activation of a GPT-2 MLP: one of HF's parameter-free [`Activation`]s, or
/// TransformerLens' `solu_ln`, which carries a LayerNorm of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpActivation {
    /// A parameter-free activation named as in HF's `ACT2FN`.
    Plain(Activation),
    /// SoLU then LayerNorm over the MLP width (Elhage et al. 2022, "Softmax Linear Units",
    /// transformer-circuits.pub/2022/solu; TransformerLens `act_fn = "solu_ln"`):
    /// `h = LN(z ⊙ softmax(z))` with the softmax over the `n_inner` hidden units of each token,
    /// `z = x·W_fc + b_fc`. The LN's gain and bias are `transformer.h.{i}.mlp.ln.weight` /
    /// `.bias` (shape `n_inner`; TransformerLens calls them `blocks.{i}.mlp.ln.w` / `.b`) and
    /// it uses `layer_norm_epsilon`. HF transformers has no such activation: only replens and
    /// TransformerLens read these checkpoints.
    SoluLn,
}

impl<'de> Deserialize<'de> for MlpActivation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::IntoDeserializer;
        let name = String::deserialize(d)?;
        if name == SOLU_LN {
            return Ok(MlpActivation::SoluLn);
        }
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            name.as_str().into_deserializer();
        Activation::deserialize(de)
            .map(MlpActivation::Plain)
            .map_err(|e| {
                serde::de::Error::custom(format!("{e} (GPT-2 also accepts \"{SOLU_LN}\")"))
            })
    }
}

fn default_gelu_new() -> MlpActivation {
    MlpActivation::Plain(Activation::GeluTanh)
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
    pub activation_function: MlpActivation,
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

    /// The product goes through [`super::fast::linear_matmul`] (the output's columns shared
    /// among the threads; the same values as candle's matmul).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, k) = x.dims3()?;
        super::fast::linear_matmul(&x.reshape((b * t, k))?, &self.weight)?
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
    /// The activation between `c_fc` and `mlp_proj`, with its weights if it has any.
    act: BlockActivation,
    mlp_proj: Conv1D,
    /// Multiplies `q·kᵀ`: `1/sqrt(head_dim)` (if `scale_attn_weights`) `/ (layer + 1)` (if
    /// `scale_attn_by_inverse_layer_idx`), as in HF `GPT2Attention.scaling`.
    scaling: f64,
}

enum BlockActivation {
    Plain(Activation),
    SoluLn(LayerNorm),
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
    /// Some weight is a trainable `Var`: use the differentiable ops (see the module docs).
    trainable: bool,
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
                act: match cfg.activation_function {
                    MlpActivation::Plain(a) => BlockActivation::Plain(a),
                    MlpActivation::SoluLn => BlockActivation::SoluLn(
                        layer_norm(inner, eps, vb.pp("mlp.ln"))
                            .context(|| format!("gpt2 layer {i} solu_ln norm (mlp.ln)"))?,
                    ),
                },
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
        // Any `Var` among the weights means someone trains through this network.
        let mut weights = vec![&wte, &wpe, ln_f.weight(), &head];
        weights.extend(ln_f.bias());
        for b in &blocks {
            weights.extend([
                &b.c_attn.weight,
                &b.c_attn.bias,
                &b.c_proj.weight,
                &b.c_proj.bias,
            ]);
            weights.extend([
                &b.c_fc.weight,
                &b.c_fc.bias,
                &b.mlp_proj.weight,
                &b.mlp_proj.bias,
            ]);
            let mut norms = vec![&b.ln_1, &b.ln_2];
            if let BlockActivation::SoluLn(ln) = &b.act {
                norms.push(ln);
            }
            for ln in norms {
                weights.push(ln.weight());
                weights.extend(ln.bias());
            }
        }
        let trainable = weights.iter().any(|t| t.is_variable());
        Ok(Self {
            trainable,
            cfg: cfg.clone(),
            wte: Embedding::new(wte, d),
            wpe: Embedding::new(wpe, d),
            blocks,
            ln_f,
            lm_head: Linear::new(head, None),
        })
    }
}

/// LayerNorm forward; the fused kernel has no backward, so use composite ops when training.
fn norm(ln: &LayerNorm, x: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
    match (grad, ln.bias()) {
        (true, Some(bias)) => {
            candle_nn::ops::layer_norm_slow(x, ln.weight(), bias, ln.eps() as f32)
        }
        _ => ln.forward(x),
    }
}

/// Softmax over the last dimension; the fused kernel has no backward, so use composite ops
/// when training.
fn softmax_last(x: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
    if grad {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

impl Block {
    fn attention(
        &self,
        x: &Tensor,
        bias: &Tensor,
        n_head: usize,
        grad: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / n_head;
        let qkv = self.c_attn.forward(x)?;
        let heads = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(D::Minus1, i * d, d)?
                .reshape((b, t, n_head, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let y = attend_with(&heads(0)?, &heads(1)?, &heads(2)?, bias, self.scaling, grad)?;
        self.c_proj.forward(&y)
    }

    fn mlp(&self, x: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let z = self.c_fc.forward(x)?;
        let h = match &self.act {
            BlockActivation::Plain(act) => act.apply(&z)?,
            BlockActivation::SoluLn(ln) => norm(ln, &(&z * softmax_last(&z, grad)?)?, grad)?,
        };
        self.mlp_proj.forward(&h)
    }
}

impl Gpt2 {
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Blocks `start..n_layer` on the residual stream `x` entering block `start`.
    fn run_blocks(
        &self,
        start: usize,
        mut x: Tensor,
        bias: &Tensor,
        hooks: &HookSpec,
        cache: &mut ActivationCache,
        grad: bool,
    ) -> Result<Tensor> {
        for (i, block) in self.blocks.iter().enumerate().skip(start) {
            let ctx = || format!("gpt2 layer {i} forward");
            cache.record(hooks, HookPoint::ResidPre(i), &x);
            let h = norm(&block.ln_1, &x, grad).context(ctx)?;
            let attn = block
                .attention(&h, bias, self.cfg.n_head, grad)
                .context(ctx)?;
            cache.record(hooks, HookPoint::AttnOut(i), &attn);
            x = (attn + &x).context(ctx)?;
            let h = norm(&block.ln_2, &x, grad).context(ctx)?;
            let mlp = block.mlp(&h, grad).context(ctx)?;
            cache.record(hooks, HookPoint::MlpOut(i), &mlp);
            x = (&x + mlp).context(ctx)?;
            cache.record(hooks, HookPoint::ResidPost(i), &x);
        }
        Ok(x)
    }

    /// Final norm and LM head.
    fn head(
        &self,
        x: &Tensor,
        hooks: &HookSpec,
        cache: &mut ActivationCache,
        grad: bool,
    ) -> Result<Option<Tensor>> {
        let x = norm(&self.ln_f, x, grad).context(|| "gpt2 final norm".to_string())?;
        cache.record(hooks, HookPoint::LnFinal, &x);
        if !hooks.wants_logits() {
            return Ok(None);
        }
        let logits = self
            .lm_head
            .forward(&x)
            .context(|| "gpt2 LM head".to_string())?;
        Ok(Some(logits))
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
        let grad = self.trainable;

        // HF: position_ids = arange(seq) for every row (right padding keeps real positions).
        let positions = Tensor::arange(0u32, t as u32, device)?;
        let x = self
            .wte
            .forward(input_ids)?
            .broadcast_add(&self.wpe.forward(&positions)?)?;
        cache.record(hooks, HookPoint::Embed, &x);
        let x = self.run_blocks(0, x, &bias, hooks, &mut cache, grad)?;
        let logits = self.head(&x, hooks, &mut cache, grad)?;
        Ok(ForwardOutput { cache, logits })
    }

    /// Blocks `start..n_layer`, final norm and head on `resid`, the `(batch, seq, n_embd)`
    /// residual stream entering block `start` (`start == n_layer` runs only the final norm and
    /// head). Positions are `0..seq` as in [`forward`](Transformer::forward); hooks of blocks
    /// before `start` and `hook_embed` are not recorded.
    fn forward_from(
        &self,
        start: usize,
        resid: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput> {
        let n = self.cfg.n_layer;
        if start > n {
            bail!("forward_from: start block {start} is out of range: the model has {n} blocks, so start must be in 0..={n}");
        }
        let (b, t, d) = resid
            .dims3()
            .context(|| "forward_from: resid must be a (batch, seq, d_model) tensor".to_string())?;
        if d != self.cfg.n_embd {
            bail!(
                "forward_from: resid has width {d} but the model's n_embd is {}",
                self.cfg.n_embd
            );
        }
        if attention_mask.dims() != [b, t] || attention_mask.dtype() != DType::U32 {
            bail!(
                "forward_from: attention_mask must be u32 of shape [{b}, {t}] like resid, got {:?} {:?}",
                attention_mask.dtype(),
                attention_mask.dims()
            );
        }
        if b == 0 || t == 0 {
            bail!("forward_from: empty batch: resid has shape ({b}, {t}, {d})");
        }
        if t > self.cfg.n_positions {
            bail!(
                "forward_from: sequence length {t} exceeds the model's {} positions",
                self.cfg.n_positions
            );
        }
        if resid.dtype() != DType::F32 {
            bail!("forward_from: resid must be f32, got {:?}", resid.dtype());
        }
        let bias = causal_padding_bias(attention_mask)?;
        let mut cache = ActivationCache::new();
        let grad = self.trainable || resid.track_op();
        let x = self.run_blocks(start, resid.clone(), &bias, hooks, &mut cache, grad)?;
        let logits = self.head(&x, hooks, &mut cache, grad)?;
        Ok(ForwardOutput { cache, logits })
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
        if cfg.activation_function == MlpActivation::SoluLn {
            specs.push(p(n("mlp.ln.weight"), &[inner], Init::Ones));
            specs.push(p(n("mlp.ln.bias"), &[inner], Init::Zeros));
        }
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
    attend_with(q, k, v, bias, scale, false)
}

/// [`attend`], with a softmax that supports backpropagation when `grad`.
pub(crate) fn attend_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    grad: bool,
) -> candle_core::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    // Heads on rayon's threads where the operands allow it (training tensors take candle's).
    let scores = (super::fast::matmul(q, &k.t()?.contiguous()?)? * scale)?.broadcast_add(bias)?;
    let probs = softmax_last(&scores, grad)?;
    super::fast::matmul(&probs, v)?
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
        assert_eq!(
            c.activation_function,
            MlpActivation::Plain(Activation::GeluTanh)
        );
        assert_eq!((c.n_positions, c.layer_norm_epsilon), (1024, 1e-5));
        assert!(c.scale_attn_weights && c.tie_word_embeddings);
        let specs = param_specs(&c);
        assert_eq!(specs.len(), 2 + 2 * 12 + 2);
    }

    #[test]
    fn solu_ln_config_specs_and_missing_norm() {
        use crate::model::init::random_weights;
        let json = |act: &str| {
            format!(
                r#"{{"vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 4,
                    "activation_function": "{act}"}}"#
            )
        };
        let c: Config = serde_json::from_str(&json("solu_ln")).unwrap();
        assert_eq!(c.activation_function, MlpActivation::SoluLn);
        let specs = param_specs(&c);
        assert!(specs
            .iter()
            .any(|s| s.name == "transformer.h.0.mlp.ln.weight" && s.shape == [32]));
        let dev = candle_core::Device::Cpu;
        let mut w = random_weights(&specs, 0, &dev).unwrap();
        assert!(Gpt2::load(&c, VarBuilder::from_tensors(w.clone(), DType::F32, &dev)).is_ok());
        w.remove("transformer.h.0.mlp.ln.bias");
        let err = Gpt2::load(&c, VarBuilder::from_tensors(w, DType::F32, &dev))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("mlp.ln"), "{err}");
        let err = serde_json::from_str::<Config>(&json("solu"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("solu_ln"), "{err}");
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
