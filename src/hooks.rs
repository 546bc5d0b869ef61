//! Hook points with TransformerLens names, the [`HookSpec`] that selects which to keep,
//! and the [`ActivationCache`] that holds them after a forward pass.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

use crate::error::{Error, Result};

/// A named place in the forward pass, spelled as in TransformerLens.
///
/// ```
/// use replens::hooks::HookPoint;
/// let p: HookPoint = "blocks.3.hook_resid_post".parse().unwrap();
/// assert_eq!(p, HookPoint::ResidPost(3));
/// assert_eq!(p.to_string(), "blocks.3.hook_resid_post");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookPoint {
    /// `hook_embed`: token (+ position) embeddings entering block 0.
    Embed,
    /// `blocks.{i}.hook_resid_pre`: the residual stream entering block i.
    ResidPre(usize),
    /// `blocks.{i}.hook_attn_out`: attention sub-layer output (after the output projection).
    AttnOut(usize),
    /// `blocks.{i}.hook_mlp_out`: MLP sub-layer output.
    MlpOut(usize),
    /// `blocks.{i}.hook_resid_post`: the residual stream leaving block i.
    ResidPost(usize),
    /// `ln_final.hook_normalized`: the final norm's output (what the unembedding reads).
    LnFinal,
}

impl HookPoint {
    /// Block index of a per-block hook, `None` for `hook_embed` / `ln_final`.
    pub fn layer(&self) -> Option<usize> {
        match self {
            HookPoint::ResidPre(i)
            | HookPoint::AttnOut(i)
            | HookPoint::MlpOut(i)
            | HookPoint::ResidPost(i) => Some(*i),
            HookPoint::Embed | HookPoint::LnFinal => None,
        }
    }

    /// Position of this hook along the depth of the network, used to order frames:
    /// embed = 0, block i contributes 4 slots, ln_final is last.
    pub fn depth_order(&self) -> usize {
        match self {
            HookPoint::Embed => 0,
            HookPoint::ResidPre(i) => 1 + 4 * i,
            HookPoint::AttnOut(i) => 2 + 4 * i,
            HookPoint::MlpOut(i) => 3 + 4 * i,
            HookPoint::ResidPost(i) => 4 + 4 * i,
            HookPoint::LnFinal => usize::MAX,
        }
    }

    /// Check the hook exists in a model with `n_layers` blocks.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        match self.layer() {
            Some(i) if i >= n_layers => Err(Error::UnknownHook {
                name: self.to_string(),
                reason: format!(
                    "the model has {n_layers} blocks (0..={})",
                    n_layers.saturating_sub(1)
                ),
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => write!(f, "hook_embed"),
            HookPoint::ResidPre(i) => write!(f, "blocks.{i}.hook_resid_pre"),
            HookPoint::AttnOut(i) => write!(f, "blocks.{i}.hook_attn_out"),
            HookPoint::MlpOut(i) => write!(f, "blocks.{i}.hook_mlp_out"),
            HookPoint::ResidPost(i) => write!(f, "blocks.{i}.hook_resid_post"),
            HookPoint::LnFinal => write!(f, "ln_final.hook_normalized"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let unknown = |reason: &str| Error::UnknownHook {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let name = name.trim();
        match name {
            "hook_embed" => return Ok(HookPoint::Embed),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinal),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.").ok_or_else(|| {
            unknown("expected hook_embed, ln_final.hook_normalized or blocks.{i}.hook_{resid_pre,attn_out,mlp_out,resid_post}")
        })?;
        let (index, hook) = rest
            .split_once('.')
            .ok_or_else(|| unknown("expected blocks.{i}.hook_<name>"))?;
        let i: usize = index
            .parse()
            .map_err(|_| unknown("the block index must be a non-negative integer"))?;
        match hook {
            "hook_resid_pre" => Ok(HookPoint::ResidPre(i)),
            "hook_attn_out" => Ok(HookPoint::AttnOut(i)),
            "hook_mlp_out" => Ok(HookPoint::MlpOut(i)),
            "hook_resid_post" => Ok(HookPoint::ResidPost(i)),
            _ => Err(unknown(
                "per-block hooks are hook_resid_pre, hook_attn_out, hook_mlp_out, hook_resid_post",
            )),
        }
    }
}

/// Which hook points a forward pass keeps. Only requested hooks are stored.
///
/// ```
/// use replens::hooks::{HookPoint, HookSpec};
/// let spec = HookSpec::parse(&["blocks.0.hook_resid_post", "ln_final.hook_normalized"]).unwrap();
/// assert!(spec.wants(HookPoint::ResidPost(0)));
/// assert!(!spec.wants(HookPoint::ResidPost(1)));
/// assert!(HookSpec::all_residual().wants(HookPoint::ResidPost(7)));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookSpec {
    points: Vec<HookPoint>,
    all_resid_post: bool,
    all_blocks: bool,
    /// `all()` also keeps `hook_embed` and `ln_final` where the model has them.
    ends: bool,
    /// Stop after the final norm: no unembedding, so no logits and no loss.
    skip_logits: bool,
}

impl HookSpec {
    /// Keep nothing (logits and loss only).
    pub fn none() -> Self {
        Self::default()
    }

    /// Keep every hook point of every block, plus `hook_embed` and `ln_final`.
    pub fn all() -> Self {
        Self {
            points: vec![],
            all_resid_post: true,
            all_blocks: true,
            ends: true,
            skip_logits: false,
        }
    }

    /// Keep `hook_embed` and `blocks.{i}.hook_resid_post` for every block: the residual stream
    /// at every depth, the usual input to representation metrics.
    pub fn all_residual() -> Self {
        Self {
            points: vec![HookPoint::Embed],
            all_resid_post: true,
            all_blocks: false,
            ends: false,
            skip_logits: false,
        }
    }

    /// Keep exactly these points.
    pub fn points(points: impl IntoIterator<Item = HookPoint>) -> Self {
        let mut spec = Self::default();
        for p in points {
            spec = spec.with(p);
        }
        spec
    }

    /// Parse TransformerLens names; an unknown name is an error that names it.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self> {
        let points = names
            .iter()
            .map(|n| n.as_ref().parse::<HookPoint>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::points(points))
    }

    /// Add one point (builder style).
    pub fn with(mut self, point: HookPoint) -> Self {
        if !self.points.contains(&point) {
            self.points.push(point);
        }
        self
    }

    /// Skip the unembedding (the `lm_head`): the forward pass stops after the final norm, so
    /// there are no logits and no per-token loss, only the hooks. Like TransformerLens'
    /// `return_type=None`. Hidden states are unchanged. A decoder's forward pass skips 20–30 %
    /// of its multiply-adds (SmolLM2-135M: the 49,152 × 576 head is 21 % of the weights it
    /// multiplies; GPT-2 small: 31 %) and never allocates the `(batch, seq, vocab)` logits; the
    /// time saved is smaller where per-layer overhead dominates (`BENCHMARKS.md`). Encoders have
    /// no head, so this changes nothing there.
    ///
    /// ```
    /// use replens::prelude::*;
    /// let model = Model::load("smollm2")?;
    /// let spec = HookSpec::all_residual().without_logits();
    /// assert!(!spec.wants_logits());
    /// let run = model.run(&["The cat sat."], &spec)?;
    /// assert!(run.docs[0].token_loss.is_none());
    /// let full = model.run(&["The cat sat."], &HookSpec::all_residual())?;
    /// let point = HookPoint::ResidPost(3);
    /// let same = (run.docs[0].cache.get(point)? - full.docs[0].cache.get(point)?)?
    ///     .abs()?
    ///     .max_all()?
    ///     .to_scalar::<f32>()?;
    /// assert_eq!(same, 0.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn without_logits(mut self) -> Self {
        self.skip_logits = true;
        self
    }

    /// Does the forward pass compute logits (see [`without_logits`](Self::without_logits))?
    pub fn wants_logits(&self) -> bool {
        !self.skip_logits
    }

    /// Does the forward pass need to keep `point`?
    pub fn wants(&self, point: HookPoint) -> bool {
        if self.points.contains(&point) {
            return true;
        }
        match point {
            HookPoint::ResidPost(_) => self.all_resid_post || self.all_blocks,
            HookPoint::ResidPre(_) | HookPoint::AttnOut(_) | HookPoint::MlpOut(_) => {
                self.all_blocks
            }
            HookPoint::Embed | HookPoint::LnFinal => self.ends,
        }
    }

    /// Was `point` named explicitly (not only implied by `all()` / `all_residual()`)?
    pub fn names_explicitly(&self, point: HookPoint) -> bool {
        self.points.contains(&point)
    }

    /// The same spec without the implied `ln_final` (for models that have no final norm).
    pub fn without_implied_final_norm(&self) -> Self {
        let mut spec = self.clone();
        if spec.ends {
            spec.ends = false;
            spec.points.push(HookPoint::Embed);
        }
        spec
    }

    /// The explicit points of this spec, expanded for a model with `n_layers` blocks, in depth order.
    pub fn expand(&self, n_layers: usize) -> Vec<HookPoint> {
        let mut all = vec![HookPoint::Embed];
        for i in 0..n_layers {
            all.extend([
                HookPoint::ResidPre(i),
                HookPoint::AttnOut(i),
                HookPoint::MlpOut(i),
                HookPoint::ResidPost(i),
            ]);
        }
        all.push(HookPoint::LnFinal);
        all.into_iter().filter(|p| self.wants(*p)).collect()
    }

    /// Fail with a message naming the first hook that a model with `n_layers` blocks lacks.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        self.points.iter().try_for_each(|p| p.validate(n_layers))
    }
}

/// Activations kept by one forward pass: hook point → tensor of shape `(batch, seq, d)`.
#[derive(Debug, Clone, Default)]
pub struct ActivationCache {
    tensors: BTreeMap<HookPoint, Tensor>,
}

impl ActivationCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Store `value` under `point` if `spec` asks for it. Called by model forward passes.
    pub fn record(&mut self, spec: &HookSpec, point: HookPoint, value: &Tensor) {
        if spec.wants(point) {
            self.tensors.insert(point, value.clone());
        }
    }

    /// Insert unconditionally.
    pub fn insert(&mut self, point: HookPoint, value: Tensor) {
        self.tensors.insert(point, value);
    }

    /// The activation at `point`, or an error naming the hook and what is available.
    pub fn get(&self, point: HookPoint) -> Result<&Tensor> {
        self.tensors.get(&point).ok_or_else(|| Error::UnknownHook {
            name: point.to_string(),
            reason: format!(
                "not in this cache (kept: {}); add it to the HookSpec",
                self.names().join(", ")
            ),
        })
    }

    /// Like [`get`](Self::get) with a TransformerLens name.
    pub fn get_by_name(&self, name: &str) -> Result<&Tensor> {
        self.get(name.parse()?)
    }

    /// Hook points held, in depth order.
    pub fn points(&self) -> Vec<HookPoint> {
        let mut p: Vec<_> = self.tensors.keys().copied().collect();
        p.sort_by_key(|p| p.depth_order());
        p
    }

    /// Hook names held, in depth order.
    pub fn names(&self) -> Vec<String> {
        self.points().iter().map(|p| p.to_string()).collect()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Iterate `(point, tensor)` in depth order.
    pub fn iter(&self) -> impl Iterator<Item = (HookPoint, &Tensor)> {
        self.points()
            .into_iter()
            .map(move |p| (p, &self.tensors[&p]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in HookSpec::all().expand(3) {
            assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
        }
    }

    #[test]
    fn bad_names_are_errors_naming_the_hook() {
        for bad in [
            "blocks.x.hook_resid_post",
            "blocks.1.hook_foo",
            "resid",
            "blocks.1",
        ] {
            let err = bad.parse::<HookPoint>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        let err = HookSpec::parse(&["blocks.12.hook_resid_post"])
            .unwrap()
            .validate(12)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocks.12.hook_resid_post") && err.contains("12 blocks"),
            "{err}"
        );
    }

    #[test]
    fn expand_orders_by_depth() {
        let e = HookSpec::all_residual().expand(2);
        assert_eq!(
            e,
            vec![
                HookPoint::Embed,
                HookPoint::ResidPost(0),
                HookPoint::ResidPost(1)
            ]
        );
        assert_eq!(HookSpec::all().expand(1).len(), 6);
    }
}
