"""Inputs shared with benches/common/mod.rs (bit-identical) and the JSON line scripts/bench.py reads."""
import json
import time

import numpy as np

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def uniform(index: np.ndarray, seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(seed << 40) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)


def matrix(first_row: int, rows: int, d: int, seed: int) -> np.ndarray:
    scale = (np.float32(1.0) / np.sqrt(np.float32(1.0) + np.arange(d, dtype=np.float32))).astype(np.float32)
    out = np.empty((rows, d), dtype=np.float32)
    step = max(1, (1 << 22) // d)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        idx = np.arange((first_row + start) * d, (first_row + start + n) * d, dtype=np.uint64)
        out[start:start + n] = uniform(idx, seed).reshape(n, d) * scale
    return out


def median_time(runs, work):
    value = work()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        value = work()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], value


def report(work, impl, seconds, runs, check, **extra):
    line = {"work": work, "impl": impl, "median_s": seconds, "runs": runs, "check": float(check)}
    line.update(extra)
    print(json.dumps(line), flush=True)
