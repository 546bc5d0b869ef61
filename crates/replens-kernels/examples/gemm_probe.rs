use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (m, n, k, threads, tn) = (args[0], args[1], args[2], args[3], args[4]);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let mut c = vec![0f32; m * n];
    let par = replens_kernels::gemm_parallelism(threads);
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        unsafe {
            if tn == 1 {
                // C (m×n) = Aᵀ B, A is k×m row-major, B k×n row-major
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    m as isize,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            } else {
                // C = A Bᵀ, A m×k row-major, B n×k row-major (Linear layer)
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{m}x{n}x{k} t{threads} tn{tn}: {:.2} ms, {:.1} GFLOP/s",
        best * 1e3,
        2.0 * (m * n * k) as f64 / best / 1e9
    );
}
