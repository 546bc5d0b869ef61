#!/usr/bin/env python3
"""Golden fixtures for the toy-model trainer and model stitching (study 2) of replens.

1. A tiny GPT-2 whose MLP uses TransformerLens' ``solu_ln`` activation
   (``LN(z * softmax(z))`` over the MLP width; Elhage et al. 2022), with random weights drawn by
   torch from a fixed seed, saved in the layout replens reads (config.json with
   ``activation_function: "solu_ln"``, model.safetensors under GPT2LMHeadModel names plus
   ``transformer.h.{i}.mlp.ln.{weight,bias}``, and the byte-level tokenizer.json of the toy
   models). The forward pass is written out here in plain torch, following TransformerLens'
   ``TransformerBlock`` / ``MLP`` with ``act_fn="solu_ln"`` -- it does not use transformers or
   replens -- and its hook values and logits for a few byte sequences are stored.
2. A small public-domain corpus sample (Moby Dick paragraphs from data/corpus/moby_dick.jsonl,
   see docs/DATA.md) so that the Rust tests can train toy models without the data download.

Layout written (paths relative to the repository root):

    tests/fixtures/stitch/solu-tiny/               model directory (config, weights, tokenizer)
    tests/fixtures/stitch/solu-tiny-expected.safetensors
        doc{k}/ids                       int64 (seq,)
        doc{k}/blocks.{i}.hook_mlp_out   f32 (seq, d)
        doc{k}/blocks.{i}.hook_resid_post f32 (seq, d)
        doc{k}/logits                    f32 (seq, vocab)
    tests/fixtures/stitch/corpus.jsonl             {"text": ...} per line

Run with the reference venv:  /opt/ref/venv/bin/python scripts/reference/toy_reference.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "stitch"

VOCAB = 257  # 256 bytes + <|endoftext|>
EOT = 256
N_LAYERS = 2
D = 32
N_HEADS = 4
D_MLP = 64
N_POS = 24
EPS = 1e-5

TEXTS = ["Call me Ishmael.", "Whale ho! \u00e9\u2014ok", "a"]
CORPUS_BYTES = 60_000


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (openai/gpt-2 encoder.py)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_json() -> dict:
    table = bytes_to_unicode()
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": EOT,
                "content": "<|endoftext|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": False,
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {table[b]: b for b in range(256)},
            "merges": [],
        },
    }


def make_weights(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights, larger than GPT-2's init so that the SoLU softmax is far from uniform."""

    def normal(*shape, std):
        return torch.randn(*shape, generator=gen) * std

    w = {
        "transformer.wte.weight": normal(VOCAB, D, std=0.5),
        "transformer.wpe.weight": normal(N_POS, D, std=0.3),
        "transformer.ln_f.weight": 1 + normal(D, std=0.1),
        "transformer.ln_f.bias": normal(D, std=0.1),
    }
    for i in range(N_LAYERS):
        p = f"transformer.h.{i}."
        w |= {
            p + "ln_1.weight": 1 + normal(D, std=0.1),
            p + "ln_1.bias": normal(D, std=0.1),
            p + "attn.c_attn.weight": normal(D, 3 * D, std=0.3),
            p + "attn.c_attn.bias": normal(3 * D, std=0.1),
            p + "attn.c_proj.weight": normal(D, D, std=0.2),
            p + "attn.c_proj.bias": normal(D, std=0.1),
            p + "ln_2.weight": 1 + normal(D, std=0.1),
            p + "ln_2.bias": normal(D, std=0.1),
            p + "mlp.c_fc.weight": normal(D, D_MLP, std=0.8),
            p + "mlp.c_fc.bias": normal(D_MLP, std=0.3),
            p + "mlp.ln.weight": 1 + normal(D_MLP, std=0.1),
            p + "mlp.ln.bias": normal(D_MLP, std=0.1),
            p + "mlp.c_proj.weight": normal(D_MLP, D, std=0.2),
            p + "mlp.c_proj.bias": normal(D, std=0.1),
        }
    return {k: v.float().contiguous() for k, v in w.items()}


def layer_norm(x, w, b):
    # TransformerLens LayerNorm: centre, scale by sqrt(mean square + eps), then affine.
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + EPS).sqrt()
    return x / scale * w + b


def forward(w: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """TransformerLens-style forward pass in float64 (weights split per head, as TL stores them)."""
    w = {k: v.double() for k, v in w.items()}
    seq = ids.shape[0]
    out = {}
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:seq]
    hd = D // N_HEADS
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    for i in range(N_LAYERS):
        p = f"transformer.h.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        wq, wk, wv = w[p + "attn.c_attn.weight"].split(D, dim=1)
        bq, bk, bv = w[p + "attn.c_attn.bias"].split(D, dim=0)
        attn = torch.zeros(seq, D, dtype=torch.float64)
        for head in range(N_HEADS):
            s = slice(head * hd, (head + 1) * hd)
            q = h @ wq[:, s] + bq[s]
            k = h @ wk[:, s] + bk[s]
            v = h @ wv[:, s] + bv[s]
            scores = (q @ k.T) / math.sqrt(hd)
            scores = scores.masked_fill(~causal, float("-inf"))
            pattern = torch.softmax(scores, dim=-1)
            z = pattern @ v
            attn = attn + z @ w[p + "attn.c_proj.weight"][s, :]
        attn = attn + w[p + "attn.c_proj.bias"]
        x = x + attn
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        pre = h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        mid = pre * torch.softmax(pre, dim=-1)  # SoLU
        post = layer_norm(mid, w[p + "mlp.ln.weight"], w[p + "mlp.ln.bias"])
        mlp_out = post @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        x = x + mlp_out
        out[f"blocks.{i}.hook_mlp_out"] = mlp_out
        out[f"blocks.{i}.hook_resid_post"] = x
    x = layer_norm(x, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"])
    out["logits"] = x @ w["transformer.wte.weight"].T
    return {k: v.float().contiguous() for k, v in out.items()}


def write_model() -> None:
    gen = torch.Generator().manual_seed(20231014)
    weights = make_weights(gen)
    model_dir = OUT / "solu-tiny"
    model_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": VOCAB,
        "n_positions": N_POS,
        "n_ctx": N_POS,
        "n_embd": D,
        "n_layer": N_LAYERS,
        "n_head": N_HEADS,
        "n_inner": D_MLP,
        "activation_function": "solu_ln",
        "layer_norm_epsilon": EPS,
        "tie_word_embeddings": True,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
    }
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json()) + "\n")
    save_file(weights, str(model_dir / "model.safetensors"))

    expected = {}
    for k, text in enumerate(TEXTS):
        ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)
        assert ids.shape[0] <= N_POS
        expected[f"doc{k}/ids"] = ids
        for name, value in forward(weights, ids).items():
            expected[f"doc{k}/{name}"] = value
    save_file(expected, str(OUT / "solu-tiny-expected.safetensors"))


def write_corpus() -> None:
    src = ROOT / "data" / "corpus" / "moby_dick.jsonl"
    rows, size = [], 0
    with src.open() as f:
        for line in f:
            text = json.loads(line)["text"]
            if len(text) < 40:
                continue
            rows.append(text)
            size += len(text.encode("utf-8"))
            if size >= CORPUS_BYTES:
                break
    with (OUT / "corpus.jsonl").open("w") as f:
        for text in rows:
            f.write(json.dumps({"text": text}) + "\n")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    write_model()
    write_corpus()
    print("wrote", *sorted(str(p.relative_to(ROOT)) for p in OUT.rglob("*") if p.is_file()))
