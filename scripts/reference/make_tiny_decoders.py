#!/usr/bin/env python3
"""Golden fixtures for the GPT-2 and GPT-NeoX (Pythia) forward passes of replens.

Builds tiny randomly initialised GPT2LMHeadModel / GPTNeoXForCausalLM checkpoints with a fixed
torch seed, saves them in Hugging Face layout (config.json, model.safetensors, tokenizer.json),
runs a few token-id sequences (plus one right-padded batch) through transformers with forward
hooks, and stores every TransformerLens-style hook point and the logits.

Layout written (paths relative to the repository root):

    tests/fixtures/tiny-gpt2/model/                    HF directory (GPT2LMHeadModel)
    tests/fixtures/tiny-gpt2/expected.safetensors
    tests/fixtures/tiny-gpt-neox/model/                HF directory (parallel residual)
    tests/fixtures/tiny-gpt-neox/expected.safetensors
    tests/fixtures/tiny-gpt-neox/sequential/model/     use_parallel_residual=False variant
    tests/fixtures/tiny-gpt-neox/sequential/expected.safetensors

The expected tensors live *outside* the model directory because replens loads every
`*.safetensors` file of a model directory as weights.

Keys of expected.safetensors:
    doc{k}/ids                         int64 (seq,)           one unpadded sequence
    doc{k}/{hook}                      f32   (seq, d)         e.g. doc0/blocks.1.hook_resid_post
    doc{k}/logits                      f32   (seq, vocab)
    batch/ids, batch/mask              int64 (batch, seq)     right padded with id 0, mask 1/0
    batch/{hook}, batch/logits         f32   (batch, seq, .)  HF's output for the padded batch
                                                              (padded positions are meaningless)

Hook points (what HF module they come from):
    hook_embed                 input of block 0 (token + position embeddings, after dropout = eval no-op)
    blocks.{i}.hook_resid_pre  input of block i
    blocks.{i}.hook_attn_out   output[0] of the attention module: after the output projection
                               (c_proj / dense), before dropout (identity in eval) and residual add
    blocks.{i}.hook_mlp_out    output of the MLP module
    blocks.{i}.hook_resid_post output of block i
    ln_final.hook_normalized   output of the final LayerNorm (ln_f / final_layer_norm)

Run with the reference venv:  /opt/ref/venv/bin/python scripts/reference/make_tiny_decoders.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

VOCAB = 512
N_LAYERS = 3
D_MODEL = 64
N_HEADS = 4
N_POS = 64

CORPUS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Transformers read tokens and write hidden states, layer after layer.",
    "Residual streams carry information from the embedding to the unembedding.",
    "Rotary embeddings rotate queries and keys by the position of each token.",
    "Small models are fast to test; large models are slow to load.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "1234567890 !?.,;:'\"()[]{} - + * / = < > @ # $ % ^ & _ | ~",
]

# Token-id sequences of different lengths (all ids < VOCAB). doc2 is length 1 on purpose.
DOCS = [
    [5, 17, 301, 42, 99, 7, 256, 511, 3, 64, 128, 200, 13],
    [400, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 300, 301, 302, 303, 450, 451],
    [77],
    [260, 261, 262, 263, 264],
]


def make_tokenizer(out_dir: Path) -> None:
    """A tiny byte-level BPE (GPT-2 style) trained on CORPUS; its vocab fits in the model's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 12,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    tok.save(str(out_dir / "tokenizer.json"))


def first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def capture(model, blocks, attn_of, mlp_of, final_norm, ids, mask):
    """Run `model` with hooks; return {hook name: tensor (batch, seq, d)} plus 'logits'."""
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def pre_hook(name):
        def f(_mod, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            acts[name] = hs.detach().clone()
        return f

    def out_hook(name):
        def f(_mod, _args, out):
            acts[name] = first(out).detach().clone()
        return f

    handles.append(blocks[0].register_forward_pre_hook(pre_hook("hook_embed"), with_kwargs=True))
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(pre_hook(f"blocks.{i}.hook_resid_pre"), with_kwargs=True))
        handles.append(attn_of(block).register_forward_hook(out_hook(f"blocks.{i}.hook_attn_out")))
        handles.append(mlp_of(block).register_forward_hook(out_hook(f"blocks.{i}.hook_mlp_out")))
        handles.append(block.register_forward_hook(out_hook(f"blocks.{i}.hook_resid_post")))
    handles.append(final_norm.register_forward_hook(out_hook("ln_final.hook_normalized")))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    acts["logits"] = out.logits.detach().clone()
    n_expected = 2 + 4 * len(blocks)
    assert len(acts) == n_expected + 1, sorted(acts)
    return acts


def golden(model, blocks, attn_of, mlp_of, final_norm) -> dict[str, torch.Tensor]:
    model.eval()
    out: dict[str, torch.Tensor] = {}
    singles = []
    for k, doc in enumerate(DOCS):
        ids = torch.tensor([doc], dtype=torch.long)
        acts = capture(model, blocks, attn_of, mlp_of, final_norm, ids, torch.ones_like(ids))
        singles.append(acts)
        out[f"doc{k}/ids"] = ids[0].clone()
        for name, t in acts.items():
            out[f"doc{k}/{name}"] = t[0].contiguous().float()

    # One right-padded batch of all docs (pad id 0, like replens::model::pad_batch).
    seq = max(len(d) for d in DOCS)
    ids = torch.zeros((len(DOCS), seq), dtype=torch.long)
    mask = torch.zeros((len(DOCS), seq), dtype=torch.long)
    for k, doc in enumerate(DOCS):
        ids[k, : len(doc)] = torch.tensor(doc)
        mask[k, : len(doc)] = 1
    acts = capture(model, blocks, attn_of, mlp_of, final_norm, ids, mask)
    out["batch/ids"] = ids
    out["batch/mask"] = mask
    worst = 0.0
    for name, t in acts.items():
        out[f"batch/{name}"] = t.contiguous().float()
        for k, doc in enumerate(DOCS):
            d = (t[k, : len(doc)] - singles[k][name][0]).abs().max().item()
            worst = max(worst, d)
    # HF itself must be padding-invariant on real tokens, else the fixture is useless.
    assert worst < 1e-5, worst
    print(f"  HF padded vs unpadded max |diff| on real tokens: {worst:.2e}")
    return out


def save_model(model, model_dir: Path) -> None:
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    # generation_config.json is not needed by replens.
    gen = model_dir / "generation_config.json"
    if gen.exists():
        gen.unlink()
    make_tokenizer(model_dir)


def write(fixture: Path, model, blocks, attn_of, mlp_of, final_norm) -> None:
    save_model(model, fixture / "model")
    tensors = golden(model, blocks, attn_of, mlp_of, final_norm)
    save_file(tensors, str(fixture / "expected.safetensors"))
    from safetensors import safe_open

    with safe_open(str(fixture / "model" / "model.safetensors"), "pt") as f:
        names = sorted(f.keys())
    cfg = json.loads((fixture / "model" / "config.json").read_text())
    print(f"  {fixture.relative_to(ROOT)}: {len(names)} weight tensors, e.g. {names[:3]} ... {names[-2:]}")
    print(f"  config keys: {sorted(cfg)}")


def main() -> None:
    # GPT-2: gelu_new (HF default), tied LM head, Conv1D weights (in, out).
    torch.manual_seed(0)
    gcfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_POS,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=0,
    )
    # Eager attention: the plain softmax(QK^T/sqrt(d) + mask)V that replens implements.
    gcfg._attn_implementation = "eager"
    gpt2 = GPT2LMHeadModel(gcfg)
    # Make biases and LayerNorm gains non-trivial so that the test catches swapped/ignored ones.
    with torch.no_grad():
        for name, p in gpt2.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    print("GPT-2")
    write(
        FIXTURES / "tiny-gpt2",
        gpt2,
        gpt2.transformer.h,
        lambda b: b.attn,
        lambda b: b.mlp,
        gpt2.transformer.ln_f,
    )

    # GPT-NeoX (Pythia layout): parallel residual, partial rotary 0.25, untied head.
    for sub, parallel, pct, act in [("", True, 0.25, "gelu"), ("sequential", False, 0.5, "gelu_new")]:
        torch.manual_seed(1 if parallel else 2)
        ncfg = GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            intermediate_size=4 * D_MODEL,
            hidden_act=act,
            rotary_pct=pct,
            rotary_emb_base=10000,
            max_position_embeddings=N_POS,
            use_parallel_residual=parallel,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
        ncfg._attn_implementation = "eager"
        neox = GPTNeoXForCausalLM(ncfg)
        with torch.no_grad():
            for name, p in neox.named_parameters():
                if name.endswith("bias") or "layernorm" in name or "layer_norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
        print(f"GPT-NeoX parallel={parallel} rotary_pct={pct} act={act}")
        fixture = FIXTURES / "tiny-gpt-neox" / sub if sub else FIXTURES / "tiny-gpt-neox"
        write(
            fixture,
            neox,
            neox.gpt_neox.layers,
            lambda b: b.attention,
            lambda b: b.mlp,
            neox.gpt_neox.final_layer_norm,
        )


if __name__ == "__main__":
    main()
