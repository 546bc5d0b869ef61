//! f32 CPU fast paths for the hot operations of a decoder block (RMSNorm, residual sums, the
//! SwiGLU gate, blocked linear layers).
//!
//! Why: each of candle's element-wise ops over 64k elements or more runs on candle's own
//! barrier pool, whose workers then spin for ~25,000 `pause`s, while the matmuls run on rayon's
//! threads; on a 2–4 core machine the spinning workers take cores from the matmuls (a quarter of
//! an extraction's samples in `perf`). These kernels (`replens_kernels`, built at opt-level 3)
//! are fused (one pass over memory each) and run on rayon's pool, the one `gemm` uses.
//!
//! Each function returns `None` when its inputs are not plain f32 CPU tensors, or when autograd
//! tracks them; callers then run the generic candle ops, which compute the same values.

use candle_core::{DType, Tensor, WithDType};

/// Whether `t` can take a fast path in `dtype`: of that dtype, on the CPU, not tracked by
/// autograd.
fn eligible(t: &Tensor, dtype: DType) -> bool {
    t.dtype() == dtype && t.device().is_cpu() && !t.track_op()
}

/// Runs `f` on the contents of `tensors` (made contiguous), all of type `T`, and wraps its
/// output in a tensor of `shape` on their device. `None` when any tensor is not [`eligible`].
fn with_cpu<T: WithDType>(
    tensors: &[&Tensor],
    shape: &[usize],
    f: impl FnOnce(&[&[T]], &mut [T]),
) -> candle_core::Result<Option<Tensor>> {
    if !tensors.iter().all(|t| eligible(t, T::DTYPE)) {
        return Ok(None);
    }
    let contiguous = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards = contiguous
        .iter()
        .map(|t| t.storage_and_layout())
        .collect::<Vec<_>>();
    let mut slices = Vec::with_capacity(guards.len());
    for ((storage, layout), tensor) in guards.iter().zip(&contiguous) {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            return Ok(None);
        };
        let start = layout.start_offset();
        let data = cpu.as_slice::<T>()?;
        let end = start + tensor.elem_count();
        if end > data.len() {
            candle_core::bail!(
                "tensor of shape {:?} is shorter than its storage",
                tensor.dims()
            );
        }
        slices.push(&data[start..end]);
    }
    let mut out = vec![T::zero(); shape.iter().product()];
    f(&slices, &mut out);
    let device = tensors[0].device().clone();
    drop(guards);
    Ok(Some(Tensor::from_vec(out, shape, &device)?))
}

/// [`with_cpu`] for f32 tensors (the decoders' fast paths).
fn with_f32(
    tensors: &[&Tensor],
    shape: &[usize],
    f: impl FnOnce(&[&[f32]], &mut [f32]),
) -> candle_core::Result<Option<Tensor>> {
    with_cpu(tensors, shape, f)
}

/// `a + b` for two tensors of the same shape.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if a.dims() != b.dims() {
        return Ok(None);
    }
    with_f32(&[a, b], a.dims(), |s, out| {
        replens_kernels::add(s[0], s[1], out)
    })
}

/// `silu(gate) * up` for two tensors of the same shape.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if gate.dims() != up.dims() {
        return Ok(None);
    }
    with_f32(&[gate, up], gate.dims(), |s, out| {
        replens_kernels::silu_mul(s[0], s[1], out)
    })
}

/// HF's `LlamaRMSNorm` over the last dimension of `x`, whose size must be `weight`'s.
pub(crate) fn rms_norm(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> candle_core::Result<Option<Tensor>> {
    let width = weight.elem_count();
    if weight.rank() != 1 || x.dims().last() != Some(&width) || width == 0 {
        return Ok(None);
    }
    with_f32(&[x, weight], x.dims(), |s, out| {
        replens_kernels::rms_norm(s[0], s[1], eps, out)
    })
}

/// `y = x · W` for a `(rows, Σ kᵢ)` matrix `x` and `W` given as row blocks `(kᵢ, out)`, as one
/// `gemm` call per block adding into a single output (`y += x[:, block] · W_block`): the blocked
/// sums of [`super::llama`]'s linear layers, in the same order and so bit for bit the same as
/// separate products added with candle, without their copies, temporaries and additions.
pub(crate) fn blocked_matmul(
    x: &Tensor,
    blocks: &[Tensor],
    out_dim: usize,
) -> candle_core::Result<Option<Tensor>> {
    let (rows, in_dim) = x.dims2()?;
    let widths = blocks
        .iter()
        .map(|b| b.dims2())
        .collect::<candle_core::Result<Vec<_>>>()?;
    if widths.iter().map(|(k, _)| k).sum::<usize>() != in_dim
        || widths.iter().any(|&(_, n)| n != out_dim)
    {
        candle_core::bail!(
            "blocked linear layer: blocks {widths:?} do not make a ({in_dim}, {out_dim}) weight"
        );
    }
    let mut inputs = vec![x];
    inputs.extend(blocks);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    with_f32(&inputs, &[rows, out_dim], |s, y| {
        let (xs, weights) = (s[0], &s[1..]);
        let mut start = 0;
        for (index, (w, &(len, _))) in weights.iter().zip(&widths).enumerate() {
            // SAFETY: `xs` holds (rows, in_dim) and `w` (len, out_dim) row-major, `y` (rows,
            // out_dim), all sized by `with_f32` from the shapes checked above; columns
            // `start..start + len` of `xs` lie within each row because the widths sum to in_dim.
            unsafe {
                gemm::gemm(
                    rows,
                    out_dim,
                    len,
                    y.as_mut_ptr(),
                    1,
                    out_dim as isize,
                    index > 0,
                    xs.as_ptr().add(start),
                    1,
                    in_dim as isize,
                    w.as_ptr(),
                    1,
                    out_dim as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            start += len;
        }
    })
}

/// HF `nn.LayerNorm` of `a + b` (or of `a`) over the last dimension, in f64 (the BERT family's
/// compute precision): [`replens_kernels::add_layer_norm`].
pub(crate) fn add_layer_norm(
    a: &Tensor,
    b: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    let width = weight.elem_count();
    if weight.rank() != 1
        || bias.dims() != weight.dims()
        || a.dims().last() != Some(&width)
        || width == 0
        || b.is_some_and(|b| b.dims() != a.dims())
    {
        return Ok(None);
    }
    let mut inputs = vec![a, weight, bias];
    inputs.extend(b);
    with_cpu(&inputs, a.dims(), |s, out| {
        replens_kernels::add_layer_norm(s[0], s.get(3).copied(), s[1], s[2], eps, out)
    })
}

/// `gelu_erf(xw + bias)` for `xw` `(rows, width)` and `bias` `(width,)`, in f64:
/// [`replens_kernels::bias_gelu`].
pub(crate) fn bias_gelu(xw: &Tensor, bias: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let width = bias.elem_count();
    if bias.rank() != 1 || xw.dims().last() != Some(&width) || width == 0 {
        return Ok(None);
    }
    with_cpu(&[xw, bias], xw.dims(), |s, out| {
        replens_kernels::bias_gelu(s[0], s[1], out)
    })
}

/// `softmax(scores · scale + key_bias)` for attention scores `(b, h, q, k)` and an additive key
/// mask `(b, 1, 1, k)`, in f64: [`replens_kernels::scaled_masked_softmax`].
pub(crate) fn scaled_masked_softmax(
    scores: &Tensor,
    key_bias: &Tensor,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let Ok((b, h, q, k)) = scores.dims4() else {
        return Ok(None);
    };
    if key_bias.dims() != [b, 1, 1, k] || k == 0 {
        return Ok(None);
    }
    with_cpu(&[scores, key_bias], scores.dims(), |s, out| {
        replens_kernels::scaled_masked_softmax(s[0], s[1], scale, (b, h, q, k), out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        // A fixed xorshift stream with a few large values, as SmolLM2's residual stream has.
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let v = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 97 == 0 {
                    v * 2.0e4
                } else {
                    v * 3.0
                }
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    // Sizes on both sides of the kernels' parallel threshold (64k elements).
    const SHAPES: [[usize; 3]; 2] = [[1, 7, 576], [2, 128, 576]];

    #[test]
    fn add_and_silu_mul_equal_candles_ops_bit_for_bit() {
        for shape in SHAPES {
            let (a, b) = (random(&shape, 1), random(&shape, 2));
            let sum = add(&a, &b)
                .unwrap()
                .expect("f32 CPU tensors take the fast path");
            assert_eq!(values(&sum), values(&(&a + &b).unwrap()));
            let product = silu_mul(&a, &b).unwrap().unwrap();
            let expected = (candle_nn::ops::silu(&a).unwrap() * &b).unwrap();
            assert_eq!(values(&product), values(&expected));
        }
    }

    #[test]
    fn rms_norm_matches_an_f64_reference() {
        for shape in SHAPES {
            let x = random(&shape, 3);
            let weight = random(&[576], 4);
            let y = rms_norm(&x, &weight, 1e-5).unwrap().unwrap();
            let x64 = x.to_dtype(DType::F64).unwrap();
            let inv = (x64.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                .unwrap()
                .sqrt()
                .unwrap()
                .recip()
                .unwrap();
            let expected = x64
                .broadcast_mul(&inv)
                .unwrap()
                .broadcast_mul(&weight.to_dtype(DType::F64).unwrap())
                .unwrap();
            let expected: Vec<f64> = expected.flatten_all().unwrap().to_vec1().unwrap();
            for (got, want) in values(&y).iter().zip(&expected) {
                // f32 rounding of x * inv * w: a few ulps of the result
                assert!(
                    (*got as f64 - want).abs() <= 4.0 * f32::EPSILON as f64 * want.abs().max(1e-30),
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn blocked_matmul_equals_separate_products_added_bit_for_bit() {
        for rows in [5, 300] {
            let x = random(&[rows, 600], 5);
            let blocks: Vec<Tensor> = [256, 256, 88]
                .iter()
                .enumerate()
                .map(|(i, &k)| random(&[k, 130], 10 + i as u64))
                .collect();
            let y = blocked_matmul(&x, &blocks, 130).unwrap().unwrap();
            let mut start = 0;
            let mut expected: Option<Tensor> = None;
            for block in &blocks {
                let len = block.dim(0).unwrap();
                let part = x
                    .narrow(1, start, len)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .matmul(block)
                    .unwrap();
                expected = Some(match expected {
                    None => part,
                    Some(acc) => (acc + part).unwrap(),
                });
                start += len;
            }
            assert_eq!(values(&y), values(&expected.unwrap()));
        }
    }

    #[test]
    fn blocks_that_do_not_make_the_weight_are_an_error() {
        let x = random(&[4, 10], 6);
        let err = blocked_matmul(&x, &[random(&[6, 3], 7)], 3).unwrap_err();
        assert!(
            err.to_string().contains("do not make a (10, 3) weight"),
            "{err}"
        );
    }

    #[test]
    fn other_dtypes_and_autograd_take_the_generic_path() {
        let a = random(&[2, 3], 8);
        assert!(add(
            &a.to_dtype(DType::F64).unwrap(),
            &a.to_dtype(DType::F64).unwrap()
        )
        .unwrap()
        .is_none());
        let var = Var::from_tensor(&a).unwrap();
        assert!(add(var.as_tensor(), &a).unwrap().is_none());
        let tracked = (var.as_tensor() * 2.0).unwrap();
        assert!(silu_mul(&tracked, &a).unwrap().is_none());
        assert!(add(&a, &random(&[3, 2], 9)).unwrap().is_none());
    }
}
