//! The untrained twin: the same architecture and config with seeded random weights drawn by
//! the rules of Hugging Face's `_init_weights` (normal(0, initializer_range) for linear and
//! embedding weights, zero biases, unit norm gains). Diff-eRank compares a model with this twin.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::error::{Error, Result};

/// How one parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal(0, std).
    Normal(f64),
    Zeros,
    Ones,
}

/// One named parameter of an architecture: HF checkpoint name, shape, init rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    pub fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            init,
        }
    }
}

/// Draw every parameter with a ChaCha RNG seeded by `seed` (same seed → same weights on any
/// machine). Parameters are drawn in the order given, so specs must be listed deterministically.
pub fn random_weights(
    specs: &[ParamSpec],
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = HashMap::with_capacity(specs.len());
    for spec in specs {
        let n: usize = spec.shape.iter().product();
        let tensor = match spec.init {
            Init::Zeros => Tensor::zeros(spec.shape.as_slice(), DType::F32, device)?,
            Init::Ones => Tensor::ones(spec.shape.as_slice(), DType::F32, device)?,
            Init::Normal(std) => {
                let normal = Normal::new(0.0f32, std as f32).map_err(|e| {
                    Error::InvalidInput(format!("bad init std {std} for {}: {e}", spec.name))
                })?;
                let values: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
                Tensor::from_vec(values, spec.shape.as_slice(), device)?
            }
        };
        out.insert(spec.name.clone(), tensor);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_following_the_rule() {
        let specs = vec![
            ParamSpec::new("w", &[200, 100], Init::Normal(0.02)),
            ParamSpec::new("b", &[100], Init::Zeros),
            ParamSpec::new("g", &[100], Init::Ones),
        ];
        let a = random_weights(&specs, 7, &Device::Cpu).unwrap();
        let b = random_weights(&specs, 7, &Device::Cpu).unwrap();
        let c = random_weights(&specs, 8, &Device::Cpu).unwrap();
        let w: Vec<f32> = a["w"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(w, b["w"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(w, c["w"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3,
            "{mean} {std}"
        );
        assert_eq!(a["b"].sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(a["g"].sum_all().unwrap().to_scalar::<f32>().unwrap(), 100.0);
    }
}
