"""Reference side of benches/extraction.rs: HF transformers on the same GGUF / HF model,
the same token ids (same xorshift), all hidden states, batch 1 and 8, 128 tokens, same threads.

usage: python scripts/reference/bench_extract.py [default|minilm] [threads]
"""
import os
import sys
import time

import torch
from transformers import AutoModel, AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
name = sys.argv[1] if len(sys.argv) > 1 else "default"
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)

if name == "default":
    d = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct")
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32)
else:
    model = AutoModel.from_pretrained(os.path.join(ROOT, "models", "all-MiniLM-L6-v2"), torch_dtype=torch.float32)
model.eval()
vocab = model.config.vocab_size


def ids(n, length, seed):
    s = seed
    mask = (1 << 64) - 1
    out = []
    for _ in range(n):
        row = []
        for _ in range(length):
            s ^= (s << 13) & mask
            s ^= s >> 7
            s ^= (s << 17) & mask
            row.append(s % (vocab - 1000) + 500)
        out.append(row)
    return out


seq = 128
data = torch.tensor(ids(16, seq, 42))
print(f"model {name}: threads={torch.get_num_threads()}")
with torch.inference_mode():
    for batch in (1, 8):
        model(data[:batch], output_hidden_states=True)
        times = []
        for rep in range(5):
            start = (rep * batch) % 16
            chunk = data[start:start + batch]
            t0 = time.perf_counter()
            out = model(chunk, output_hidden_states=True)
            _ = [h.numpy().copy() for h in out.hidden_states]
            times.append((time.perf_counter() - t0, chunk.shape[0] * seq))
        times.sort()
        secs, tokens = times[len(times) // 2]
        print(f"transformers batch={batch} seq={seq}: median {secs:.3f} s/batch, {tokens / secs:.0f} tokens/s")
