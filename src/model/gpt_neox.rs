//! GPT-NeoX (EleutherAI; the Pythia suite), as implemented by Hugging Face
//! `GPTNeoXForCausalLM` / `GPTNeoXModel` (transformers 5.x).
//!
//! Pre-norm decoder without position embeddings; rotary embeddings on the first
//! `rotary_ndims = int(head_dim · partial_rotary_factor)` dimensions of each query/key head, in
//! the `rotate_half` convention (first half / second half, not interleaved pairs). Each layer is
//! either parallel (`x + attn(ln1(x)) + mlp(ln2(x))`, Pythia's default) or sequential
//! (`a = x + attn(ln1(x)); a + mlp(ln2(a))`).
//!
//! The fused `query_key_value` projection is laid out per head: its output, viewed as
//! `(…, n_heads, 3 · head_dim)`, holds `[q | k | v]` for each head (HF
//! `qkv.view(..., -1, 3 * head_size).chunk(3, dim=-1)`).
//!
//! Tensor names: `gpt_neox.embed_in`, `gpt_neox.layers.N.{input_layernorm,
//! post_attention_layernorm, attention.query_key_value, attention.dense, mlp.dense_h_to_4h,
//! mlp.dense_4h_to_h}`, `gpt_neox.final_layer_norm` and the head `embed_out` (Pythia checkpoints;
//! transformers 5 calls the module `lm_head` but still saves it as `embed_out`, and both names
//! are accepted here).

use candle_core::{Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::gpt2::{attend, causal_padding_bias, check_inputs, layer_norm, Activation};
use super::init::{Init, ParamSpec};
pub use super::llama::RopeParameters;
use super::{ForwardOutput, Transformer};
use crate::error::{bail, Context, Result};
use crate::hooks::{ActivationCache, HookPoint, HookSpec};

fn default_gelu() -> Activation {
    Activation::Gelu
}
fn default_max_pos() -> usize {
    2048
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

/// HF `GPTNeoXConfig` (fields replens reads; defaults as in transformers' `GPTNeoXConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_gelu")]
    pub hidden_act: Activation,
    /// Pre-5.0 name of `rope_parameters.partial_rotary_factor` (Pythia: 0.25).
    #[serde(default)]
    pub rotary_pct: Option<f64>,
    /// Pre-5.0 name of `rope_parameters.rope_theta` (10000).
    #[serde(default)]
    pub rotary_emb_base: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    /// Biases on `query_key_value` and `dense` (the MLP always has biases).
    #[serde(default = "yes")]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// `rope_parameters` (or the legacy `rope_scaling` dict), as HF's
    /// `GPTNeoXConfig.convert_rope_params_to_dict` merges them.
    fn rope_dict(&self) -> Option<&RopeParameters> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }

    /// Rotary base: `rope_parameters.rope_theta`, else `rotary_emb_base`, else `rope_theta`,
    /// else 10000 — HF's precedence.
    pub fn rope_theta(&self) -> f64 {
        self.rope_dict()
            .and_then(|r| r.rope_theta)
            .or(self.rotary_emb_base)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// Fraction of each head that is rotated: `rope_parameters.partial_rotary_factor`, else
    /// `rotary_pct`, else `partial_rotary_factor`, else 0.25 (HF's default).
    pub fn rotary_pct(&self) -> f64 {
        self.rope_dict()
            .and_then(|r| r.partial_rotary_factor)
            .or(self.rotary_pct)
            .or(self.partial_rotary_factor)
            .unwrap_or(0.25)
    }

    /// Number of rotated dimensions per head: HF's `int(head_size * partial_rotary_factor)`
    /// rounded up to even (the cos/sin table is `cat(freqs, freqs)` of `ceil(n/2)` frequencies).
    pub fn rotary_ndims(&self) -> usize {
        let n = (self.head_dim() as f64 * self.rotary_pct()) as usize;
        n.div_ceil(2) * 2
    }

    fn validate(&self) -> Result<()> {
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            bail!(
                "gpt_neox config.json: hidden_size ({}) must be a positive multiple of num_attention_heads ({heads})",
                self.hidden_size
            );
        }
        if let Some(r) = self.rope_dict() {
            let kind = r
                .rope_type
                .as_deref()
                .or(r.kind.as_deref())
                .unwrap_or("default");
            if kind != "default" {
                bail!("gpt_neox config.json: rope_type '{kind}' is not supported (only 'default' rotary embeddings)");
            }
        }
        let pct = self.rotary_pct();
        if !(0.0..=1.0).contains(&pct) || self.rotary_ndims() > self.head_dim() {
            bail!(
                "gpt_neox config.json: partial_rotary_factor {pct} gives {} rotary dims for heads of {}",
                self.rotary_ndims(),
                self.head_dim()
            );
        }
        let theta = self.rope_theta();
        if theta.is_nan() || theta <= 0.0 {
            bail!(
                "gpt_neox config.json: rope_theta must be positive (got {})",
                self.rope_theta()
            );
        }
        Ok(())
    }
}

struct Layer {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    query_key_value: Linear,
    dense: Linear,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

/// The GPT-NeoX network.
pub struct GptNeoX {
    cfg: Config,
    embed_in: Embedding,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    embed_out: Linear,
    /// `1 / theta^(2i / rotary_ndims)`, i < rotary_ndims / 2 (HF `inv_freq`).
    inv_freq: Vec<f64>,
}

/// `nn.Linear` with HF names: weight `(out, in)`, optional bias `(out,)`.
fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

impl GptNeoX {
    /// Load from HF tensor names, with or without the `gpt_neox.` prefix
    /// (`GPTNeoXForCausalLM` vs `GPTNeoXModel`). The head is `embed_out.weight` or
    /// `lm_head.weight`; with neither, `tie_word_embeddings` reuses `embed_in`.
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let root = vb.clone();
        let vb = if vb.contains_tensor("gpt_neox.embed_in.weight") {
            vb.pp("gpt_neox")
        } else if vb.contains_tensor("embed_in.weight") {
            vb
        } else {
            bail!(
                "gpt_neox checkpoint has no token embedding: expected tensor \
                 gpt_neox.embed_in.weight (GPTNeoXForCausalLM) or embed_in.weight (GPTNeoXModel)"
            );
        };
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let embed_in = vb
            .get((cfg.vocab_size, d), "embed_in.weight")
            .context(|| "gpt_neox token embedding (vocab_size × hidden_size)".to_string())?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let vb = vb.pp(format!("layers.{i}"));
            let ctx = || format!("gpt_neox layer {i}");
            let ab = cfg.attention_bias;
            layers.push(Layer {
                input_layernorm: layer_norm(d, eps, vb.pp("input_layernorm")).context(ctx)?,
                post_attention_layernorm: layer_norm(d, eps, vb.pp("post_attention_layernorm"))
                    .context(ctx)?,
                query_key_value: linear(d, 3 * d, ab, vb.pp("attention.query_key_value"))
                    .context(ctx)?,
                dense: linear(d, d, ab, vb.pp("attention.dense")).context(ctx)?,
                dense_h_to_4h: linear(d, cfg.intermediate_size, true, vb.pp("mlp.dense_h_to_4h"))
                    .context(ctx)?,
                dense_4h_to_h: linear(cfg.intermediate_size, d, true, vb.pp("mlp.dense_4h_to_h"))
                    .context(ctx)?,
            });
        }
        let final_layer_norm = layer_norm(d, eps, vb.pp("final_layer_norm"))
            .context(|| "gpt_neox final norm".to_string())?;
        let head = if let Some(name) = ["embed_out.weight", "lm_head.weight"]
            .into_iter()
            .find(|n| root.contains_tensor(n))
        {
            root.get((cfg.vocab_size, d), name)
                .context(|| "gpt_neox LM head".to_string())?
        } else if cfg.tie_word_embeddings {
            embed_in.clone()
        } else {
            bail!("gpt_neox checkpoint has no LM head: expected tensor embed_out.weight (or lm_head.weight)");
        };
        let rot = cfg.rotary_ndims();
        let theta = cfg.rope_theta();
        let inv_freq = (0..rot / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / rot as f64))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            embed_in: Embedding::new(embed_in, d),
            layers,
            final_layer_norm,
            embed_out: Linear::new(head, None),
            inv_freq,
        })
    }

    /// `(cos, sin)` of shape `(t, rotary_ndims / 2)` for positions `0..t` (HF computes
    /// `position · inv_freq` and duplicates it; candle's `rope` takes the half table).
    fn rotary_tables(
        &self,
        t: usize,
        device: &candle_core::Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for pos in 0..t {
            for f in &self.inv_freq {
                // HF multiplies in f32; the f64 product rounded once is within an ulp of it.
                let angle = (pos as f32 * *f as f32) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), device)?,
            Tensor::from_vec(sin, (t, half), device)?,
        ))
    }
}

impl Layer {
    fn attention(
        &self,
        x: &Tensor,
        bias: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        cfg: &Config,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let h = cfg.num_attention_heads;
        let hd = cfg.head_dim();
        // (b, t, 3d) → (b, h, t, 3·hd): per head [q | k | v].
        let qkv = self
            .query_key_value
            .forward(x)?
            .reshape((b, t, h, 3 * hd))?
            .transpose(1, 2)?;
        let part = |i: usize| qkv.narrow(D::Minus1, i * hd, hd);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?.contiguous()?);
        let (q, k) = match rope {
            Some((cos, sin)) => (rotate(&q, cos, sin)?, rotate(&k, cos, sin)?),
            None => (q.contiguous()?, k.contiguous()?),
        };
        let y = attend(&q, &k, &v, bias, 1.0 / (hd as f64).sqrt())?;
        self.dense.forward(&y)
    }

    fn mlp(&self, x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
        self.dense_4h_to_h
            .forward(&act.apply(&self.dense_h_to_4h.forward(x)?)?)
    }
}

/// Rotary embedding on the first `2 · cos.dim(1)` dims of `x` `(b, h, t, hd)`, the rest passed
/// through (HF `apply_rotary_pos_emb` with `rotate_half`).
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let rot = 2 * cos.dim(1)?;
    let x_rot = candle_nn::rotary_emb::rope(&x.narrow(D::Minus1, 0, rot)?.contiguous()?, cos, sin)?;
    if rot == hd {
        return Ok(x_rot);
    }
    let x_pass = x.narrow(D::Minus1, rot, hd - rot)?;
    Tensor::cat(&[&x_rot, &x_pass], D::Minus1)?.contiguous()
}

impl Transformer for GptNeoX {
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        hooks: &HookSpec,
    ) -> Result<ForwardOutput> {
        let cfg = &self.cfg;
        let (_, t) = check_inputs(
            input_ids,
            attention_mask,
            cfg.vocab_size,
            cfg.max_position_embeddings,
        )?;
        let device = input_ids.device();
        let bias = causal_padding_bias(attention_mask)?;
        // Positions are 0..t in every row, as HF without explicit position_ids.
        let rope = if self.inv_freq.is_empty() {
            None
        } else {
            Some(self.rotary_tables(t, device)?)
        };
        let mut cache = ActivationCache::new();
        let mut x = self.embed_in.forward(input_ids)?;
        cache.record(hooks, HookPoint::Embed, &x);

        let act = cfg.hidden_act;
        for (i, layer) in self.layers.iter().enumerate() {
            let ctx = || format!("gpt_neox layer {i} forward");
            cache.record(hooks, HookPoint::ResidPre(i), &x);
            let h = layer.input_layernorm.forward(&x).context(ctx)?;
            let attn = layer
                .attention(&h, &bias, rope.as_ref(), cfg)
                .context(ctx)?;
            cache.record(hooks, HookPoint::AttnOut(i), &attn);
            x = if cfg.use_parallel_residual {
                let h = layer.post_attention_layernorm.forward(&x).context(ctx)?;
                let mlp = layer.mlp(&h, act).context(ctx)?;
                cache.record(hooks, HookPoint::MlpOut(i), &mlp);
                // HF: mlp_output + attn_output + hidden_states.
                ((mlp + attn).context(ctx)? + &x).context(ctx)?
            } else {
                let a = (attn + &x).context(ctx)?;
                let h = layer.post_attention_layernorm.forward(&a).context(ctx)?;
                let mlp = layer.mlp(&h, act).context(ctx)?;
                cache.record(hooks, HookPoint::MlpOut(i), &mlp);
                (mlp + a).context(ctx)?
            };
            cache.record(hooks, HookPoint::ResidPost(i), &x);
        }
        let x = self
            .final_layer_norm
            .forward(&x)
            .context(|| "gpt_neox final norm".to_string())?;
        cache.record(hooks, HookPoint::LnFinal, &x);
        let logits = if hooks.wants_logits() {
            Some(
                self.embed_out
                    .forward(&x)
                    .context(|| "gpt_neox LM head".to_string())?,
            )
        } else {
            None
        };
        Ok(ForwardOutput { cache, logits })
    }
}

/// Every parameter [`GptNeoX::load`] reads, under `GPTNeoXForCausalLM` checkpoint names, with
/// HF's default `_init_weights` (GPT-NeoX has no override): Normal(initializer_range) for
/// Linear and Embedding weights, zero biases, unit LayerNorm gains and zero LayerNorm biases.
pub fn param_specs(cfg: &Config) -> Vec<ParamSpec> {
    let d = cfg.hidden_size;
    let inner = cfg.intermediate_size;
    let std = cfg.initializer_range;
    let p = |name: String, shape: &[usize], init: Init| ParamSpec::new(name, shape, init);
    let mut specs = vec![p(
        "gpt_neox.embed_in.weight".into(),
        &[cfg.vocab_size, d],
        Init::Normal(std),
    )];
    for i in 0..cfg.num_hidden_layers {
        let n = |s: &str| format!("gpt_neox.layers.{i}.{s}");
        specs.extend([
            p(n("input_layernorm.weight"), &[d], Init::Ones),
            p(n("input_layernorm.bias"), &[d], Init::Zeros),
            p(n("post_attention_layernorm.weight"), &[d], Init::Ones),
            p(n("post_attention_layernorm.bias"), &[d], Init::Zeros),
            p(
                n("attention.query_key_value.weight"),
                &[3 * d, d],
                Init::Normal(std),
            ),
        ]);
        if cfg.attention_bias {
            specs.push(p(
                n("attention.query_key_value.bias"),
                &[3 * d],
                Init::Zeros,
            ));
        }
        specs.push(p(n("attention.dense.weight"), &[d, d], Init::Normal(std)));
        if cfg.attention_bias {
            specs.push(p(n("attention.dense.bias"), &[d], Init::Zeros));
        }
        specs.extend([
            p(
                n("mlp.dense_h_to_4h.weight"),
                &[inner, d],
                Init::Normal(std),
            ),
            p(n("mlp.dense_h_to_4h.bias"), &[inner], Init::Zeros),
            p(
                n("mlp.dense_4h_to_h.weight"),
                &[d, inner],
                Init::Normal(std),
            ),
            p(n("mlp.dense_4h_to_h.bias"), &[d], Init::Zeros),
        ]);
    }
    specs.push(p(
        "gpt_neox.final_layer_norm.weight".into(),
        &[d],
        Init::Ones,
    ));
    specs.push(p(
        "gpt_neox.final_layer_norm.bias".into(),
        &[d],
        Init::Zeros,
    ));
    if !cfg.tie_word_embeddings {
        specs.push(p(
            "embed_out.weight".into(),
            &[cfg.vocab_size, d],
            Init::Normal(std),
        ));
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Config {
        let json = format!(
            r#"{{"vocab_size": 10, "hidden_size": 64, "num_hidden_layers": 1,
                 "num_attention_heads": 4, "intermediate_size": 256{extra}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn rotary_settings_old_and_new_configs() {
        // HF defaults: 25 % of each head, base 10000.
        let c = parse("");
        assert_eq!(
            (c.rotary_pct(), c.rope_theta(), c.rotary_ndims()),
            (0.25, 10_000.0, 4)
        );
        assert!(c.use_parallel_residual && c.attention_bias && !c.tie_word_embeddings);
        // Pythia config.json (transformers 4.x).
        let c = parse(r#", "rotary_pct": 0.5, "rotary_emb_base": 500, "rope_scaling": null"#);
        assert_eq!(
            (c.rotary_pct(), c.rope_theta(), c.rotary_ndims()),
            (0.5, 500.0, 8)
        );
        // transformers 5.x writes rope_parameters, which wins.
        let c = parse(
            r#", "rotary_pct": 0.5, "rope_parameters": {"rope_type": "default",
                 "rope_theta": 20000, "partial_rotary_factor": 1.0}"#,
        );
        assert_eq!(
            (c.rotary_pct(), c.rope_theta(), c.rotary_ndims()),
            (1.0, 20_000.0, 16)
        );
        assert!(c.validate().is_ok());
        let c = parse(r#", "rope_scaling": {"type": "linear", "factor": 2.0}"#);
        assert!(c.validate().unwrap_err().to_string().contains("linear"));
    }

    #[test]
    fn param_specs_follow_attention_bias() {
        let with = param_specs(&parse(""));
        let without = param_specs(&parse(r#", "attention_bias": false"#));
        assert_eq!(with.len(), without.len() + 2);
        assert!(with.iter().any(|s| s.name == "embed_out.weight"));
        let tied = param_specs(&parse(r#", "tie_word_embeddings": true"#));
        assert!(!tied.iter().any(|s| s.name == "embed_out.weight"));
    }
}
