#!/usr/bin/env python3
"""Reference side of benches/extraction.rs: HF transformers on the same GGUF / HF model, the same
token ids (same xorshift), all hidden states copied to host memory, 128 tokens, same threads.
Neither side computes logits: the decoder runs as its base model (`model.model`, no lm_head),
as replens runs it with `HookSpec::without_logits`; MiniLM has no head on either side.

usage: python scripts/reference/bench_extract.py [default|minilm] [batch] [threads]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402
from transformers import AutoModel, AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench_common import median_time, report  # noqa: E402

hf_logging.set_verbosity_error()
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
name = sys.argv[1] if len(sys.argv) > 1 else "default"
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
threads = int(sys.argv[3]) if len(sys.argv) > 3 else int(os.environ.get("RAYON_NUM_THREADS", "2"))
torch.set_num_threads(threads)

if name == "default":
    d = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct")
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
else:
    model = AutoModel.from_pretrained(os.path.join(ROOT, "models", "all-MiniLM-L6-v2"), dtype=torch.float32)
model.eval()
vocab = model.config.vocab_size
# the hidden states without the unembedding (the CausalLM's base model)
body = model.model if name == "default" else model
SEQ = 128


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


data = torch.tensor(ids(16, SEQ, 42))
rep = 0


def run():
    global rep
    start = (rep * batch) % 16
    rep += 1
    chunk = data[start:min(start + batch, 16)]
    with torch.inference_mode():
        out = body(chunk, attention_mask=torch.ones_like(chunk), output_hidden_states=True)
        host = [h.numpy().copy() for h in out.hidden_states]
    # hidden_states[1] is block 0's output (replens: blocks.0.hook_resid_post)
    return float(abs(host[1][0]).astype("float64").mean())


runs = 5
secs, check = median_time(runs, run)
report(f"extract-{name}-b{batch}", "transformers", secs, runs, check,
       tokens_per_s=round(batch * SEQ / secs, 1), threads=torch.get_num_threads())
