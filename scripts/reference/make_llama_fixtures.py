#!/usr/bin/env python3
"""Golden fixtures for the Llama-family forward pass (Llama / Mistral / Qwen2 / SmolLM2) of replens.

Two parts:

(a) The packaged SmolLM2-135M-Instruct GGUF (models/SmolLM2-135M-Instruct/*.Q4_1.gguf), loaded by
    transformers' own GGUF path (`from_pretrained(dir, gguf_file=...)`, which dequantises to f32,
    undoes llama.cpp's q/k row permutation and rebuilds the tokenizer from the metadata). Three
    short sentences are tokenized by that tokenizer and run one at a time.

(b) Tiny random checkpoints saved with `save_pretrained(safe_serialization=True)` plus a small
    byte-level BPE tokenizer.json, so the safetensors/config.json path is covered:
      tiny-llama/model            LlamaForCausalLM, d=64, 2 blocks, GQA 4 heads / 2 kv heads, tied
      tiny-llama/untied/model     untied lm_head, head_dim 32 != hidden/heads, mlp_bias,
                                  attention_bias (o_proj bias too), llama3 rope scaling
      tiny-llama/mistral/model    MistralForCausalLM with sliding_window=4 (window shorter than
                                  the sequences, so the sliding mask matters)
      tiny-qwen2/model            Qwen2ForCausalLM: q/k/v biases, no o_proj bias
    and, for the GGUF path without quantisation noise, the tied tiny Llama and the tiny Qwen2
    written as f32 GGUF files the way llama.cpp's convert_hf_to_gguf.py writes them (llama.cpp
    tensor names, tokenizer in metadata, and for `llama` the q/k row permutation):
      tiny-llama/tiny-llama.f32.gguf, tiny-qwen2/tiny-qwen2.f32.gguf
    Loading those with transformers' GGUF path must reproduce the safetensors model exactly
    (checked here), so the same expected.safetensors serve both loaders.

Layout written (paths relative to the repository root):

    tests/fixtures/smollm2/expected.safetensors
    tests/fixtures/smollm2/cases.json           sentences, hooked layers, tokenizer cases, and
                                                hf_f32_vs_f64: per hook, transformers' own f32
                                                rounding error (HF f32 vs the same model in f64),
                                                which the test's tolerance is scaled by
    tests/fixtures/tiny-llama/model/ + expected.safetensors
    tests/fixtures/tiny-llama/untied/model/ + expected.safetensors
    tests/fixtures/tiny-llama/mistral/model/ + expected.safetensors
    tests/fixtures/tiny-qwen2/model/ + expected.safetensors
    tests/fixtures/tiny-*/cases.json            the texts whose ids are in doc{k}/ids

The expected tensors live outside each model directory because replens loads every
`*.safetensors` of a model directory as weights.

Keys of expected.safetensors:
    doc{k}/ids                   int64 (seq,)        token ids (HF tokenizer output for doc k's text)
    doc{k}/{hook}                f32   (seq, d)      e.g. doc0/blocks.1.hook_resid_post; every hook
                                                     but hook_resid_pre, which is stored nowhere:
                                                     HF's block i input *is* block i-1's output
                                                     (asserted here), so tests compare
                                                     blocks.{i}.hook_resid_pre with
                                                     blocks.{i-1}.hook_resid_post (i = 0: hook_embed)
    doc{k}/logits                f32   (seq, vocab)  tiny models: every position
    doc{k}/logits_last2          f32   (2, vocab)    SmolLM2: the last two positions only
    batch/ids, batch/mask        int64 (batch, seq)  tiny models: right padded with id 0
    batch/blocks.{L-1}.hook_resid_post, batch/logits
                                 f32   (batch, seq, .) HF on the padded batch (pad rows meaningless)
    tok{k}/hf_ids, tok{k}/smollm_ids  int64          SmolLM2 tokenizer-only cases (see cases.json)

SmolLM2 keeps (to stay < 5 MB): hook_embed, blocks.{i}.hook_resid_post for all 30 blocks
(HF's block i input *is* block i-1's output, so blocks.{i}.hook_resid_pre = blocks.{i-1}.hook_resid_post
and blocks.0.hook_resid_pre = hook_embed; the test checks our resid_pre against those),
hook_attn_out / hook_mlp_out of blocks 0, 14, 29, ln_final.hook_normalized, logits at the last
two positions.

Hook points (which HF module they come from):
    hook_embed                 output of model.embed_tokens
    blocks.{i}.hook_resid_pre  input of model.layers[i]
    blocks.{i}.hook_attn_out   output[0] of layers[i].self_attn (after o_proj, before the residual add)
    blocks.{i}.hook_mlp_out    output of layers[i].mlp
    blocks.{i}.hook_resid_post output of model.layers[i]
    ln_final.hook_normalized   output of model.norm

Attention runs with attn_implementation="eager" (the plain softmax(QK^T/sqrt(d)+mask)V reference).

Needs (besides torch/transformers/safetensors/tokenizers) the `gguf`, `accelerate` and `psutil`
packages: transformers refuses `from_pretrained(..., gguf_file=...)` without accelerate.
Runs single-threaded (torch.set_num_threads(1)) so the reference rounding is reproducible.

Run with the reference venv:  /opt/ref/venv/bin/python scripts/reference/make_llama_fixtures.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SMOLLM_DIR = ROOT / "models" / "SmolLM2-135M-Instruct"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Three sentences of different lengths, all < 30 tokens (and few tokens in total: the 30 layers of
# resid_post dominate the fixture size). The second has digits (SmolLM splits them one by one).
SMOLLM_SENTENCES = [
    "The cat sat on the mat.",
    "In 2024, 17 models were tested.",
    "Residual streams carry information between the layers.",
]
SMOLLM_DETAIL_LAYERS = [0, 14, 29]

# Tokenizer-only cases: ids of transformers' GGUF tokenizer ("hf") and of the original SmolLM2
# pre-tokenizer ("smollm": Digits(individual) then ByteLevel, as in SmolLM2's tokenizer.json and
# llama.cpp's "smollm" pre-tokenizer), which transformers 5.24's GGUF converter does not apply.
# They differ only where a digit follows whitespace runs, e.g. "a  1".
TOKENIZER_CASES = [
    "Hello, world! It's 3:45 pm.",
    "x  1 and  22   333",
    "<|im_start|>user\nHi there<|im_end|>",
    "naïve café — 東京",
]

TINY_CORPUS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Transformers read tokens and write hidden states, layer after layer.",
    "Residual streams carry information from the embedding to the unembedding.",
    "Rotary embeddings rotate queries and keys by the position of each token.",
    "Grouped query attention shares one key head among several query heads.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "1234567890 !?.,;:'\"()[]{} - + * / = < > @ # $ % ^ & _ | ~",
]
TINY_TEXTS = [
    "The cat sat on the mat, and the fox ran.",
    "Rotary queries rotate.",
    "A",
    "Grouped query attention.",
]


def hook_model(model, detail_layers):
    """Register forward hooks on a HF Llama-family model; returns (store dict, handles)."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    inner = model.model

    def save(name):
        def fn(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            store[name] = out.detach().clone()

        return fn

    def save_input(name):
        def fn(_module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            store[name] = x.detach().clone()

        return fn

    handles.append(inner.embed_tokens.register_forward_hook(save("hook_embed")))
    for i, layer in enumerate(inner.layers):
        handles.append(
            layer.register_forward_pre_hook(save_input(f"blocks.{i}.hook_resid_pre"), with_kwargs=True)
        )
        handles.append(layer.register_forward_hook(save(f"blocks.{i}.hook_resid_post")))
        if i in detail_layers:
            handles.append(layer.self_attn.register_forward_hook(save(f"blocks.{i}.hook_attn_out")))
            handles.append(layer.mlp.register_forward_hook(save(f"blocks.{i}.hook_mlp_out")))
    handles.append(inner.norm.register_forward_hook(save("ln_final.hook_normalized")))
    return store, handles


@torch.no_grad()
def run(model, ids: torch.Tensor, mask: torch.Tensor, detail_layers):
    store, handles = hook_model(model, detail_layers)
    try:
        out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return store, out.logits.detach().float()


def check_resid_chain(store, n_layers):
    """HF's block i input is block i-1's output: lets the SmolLM2 fixture drop resid_pre."""
    assert torch.equal(store["blocks.0.hook_resid_pre"], store["hook_embed"])
    for i in range(1, n_layers):
        assert torch.equal(store[f"blocks.{i}.hook_resid_pre"], store[f"blocks.{i - 1}.hook_resid_post"])


def max_abs(store):
    return max(float(v.abs().max()) for v in store.values())


# ----------------------------------------------------------------------------------------------
# (a) SmolLM2 from the packaged GGUF
# ----------------------------------------------------------------------------------------------


def smollm_reference_tokenizer(hf_tok):
    """The original SmolLM2 pre-tokenizer on the same vocabulary/merges."""
    backend = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return backend


def make_smollm2():
    gguf_path = SMOLLM_DIR / SMOLLM_GGUF
    if not gguf_path.exists():
        raise SystemExit(f"{gguf_path} is missing: run scripts/setup first")
    out_dir = FIXTURES / "smollm2"
    out_dir.mkdir(parents=True, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(SMOLLM_DIR, gguf_file=SMOLLM_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        SMOLLM_DIR, gguf_file=SMOLLM_GGUF, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    n_layers = model.config.num_hidden_layers
    ref_tok = smollm_reference_tokenizer(tok)

    tensors: dict[str, torch.Tensor] = {}
    biggest = 0.0
    for k, text in enumerate(SMOLLM_SENTENCES):
        ids = tok(text)["input_ids"]
        assert ids == ref_tok.encode(text).ids, (text, ids)
        assert len(ids) < 30, (text, len(ids))
        ids_t = torch.tensor([ids], dtype=torch.int64)
        store, logits = run(model, ids_t, torch.ones_like(ids_t), SMOLLM_DETAIL_LAYERS)
        check_resid_chain(store, n_layers)
        biggest = max(biggest, max_abs(store))
        tensors[f"doc{k}/ids"] = ids_t[0].clone()
        for name, value in store.items():
            if name.endswith("hook_resid_pre"):
                continue  # = previous block's resid_post (checked above)
            tensors[f"doc{k}/{name}"] = value[0].contiguous()
        tensors[f"doc{k}/logits_last2"] = logits[0, -2:].contiguous()
        print(f"smollm2 doc{k}: {len(ids)} tokens")

    # transformers' own f32 rounding: the same model run in float64 (weights are the same f32
    # values, exactly representable). Tests allow a difference of a few times this per hook,
    # because SmolLM2's massive activations (|x| ~ 2.3e4, one f32 ulp ~ 2e-3) make a fixed
    # 1e-4 absolute bound unattainable for any f32 implementation on those channels.
    noise: dict[str, dict[str, float]] = {}
    model64 = model.to(torch.float64)
    for k, text in enumerate(SMOLLM_SENTENCES):
        ids_t = tensors[f"doc{k}/ids"][None]
        store64, logits64 = run(model64, ids_t, torch.ones_like(ids_t), SMOLLM_DETAIL_LAYERS)
        store64["logits_last2"] = logits64[:, -2:]
        for name, value in store64.items():
            key = f"doc{k}/{name}"
            if name.endswith("hook_resid_pre"):
                continue
            ref = tensors[key].double()
            delta = (ref - value[0]).abs()
            entry = noise.setdefault(name, {"max_abs": 0.0, "max_scaled": 0.0, "max_value": 0.0})
            entry["max_abs"] = max(entry["max_abs"], float(delta.max()))
            entry["max_scaled"] = max(entry["max_scaled"], float((delta / value[0].abs().clamp(min=1.0)).max()))
            entry["max_value"] = max(entry["max_value"], float(value[0].abs().max()))
    model = model64.to(torch.float32)

    tok_cases = []
    for k, text in enumerate(TOKENIZER_CASES):
        hf_ids = tok(text)["input_ids"]
        smollm_ids = ref_tok.encode(text).ids
        tensors[f"tok{k}/hf_ids"] = torch.tensor(hf_ids, dtype=torch.int64)
        tensors[f"tok{k}/smollm_ids"] = torch.tensor(smollm_ids, dtype=torch.int64)
        tok_cases.append({"text": text, "same": hf_ids == smollm_ids})

    save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / "expected.safetensors")
    (out_dir / "cases.json").write_text(
        json.dumps(
            {
                "gguf": f"SmolLM2-135M-Instruct/{SMOLLM_GGUF}",
                "sentences": SMOLLM_SENTENCES,
                "detail_layers": SMOLLM_DETAIL_LAYERS,
                "n_layers": n_layers,
                "max_abs_activation": biggest,
                "hf_f32_vs_f64": noise,
                "tokenizer_cases": tok_cases,
                "notes": "hf_f32_vs_f64[hook] = max over docs of |HF f32 - HF f64| (abs, and scaled by "
                "max(1, |x|)), the reference's own rounding error; "
                "doc{k}/ids from transformers' GGUF tokenizer (no BOS: add_bos_token=false); "
                "tok{k}/hf_ids = transformers 5.24 GGUF tokenizer (plain GPT-2 byte-level regex), "
                "tok{k}/smollm_ids = SmolLM2's own pre-tokenizer (Digits(individual) + ByteLevel).",
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    size = (out_dir / "expected.safetensors").stat().st_size
    print(f"smollm2: {size / 1e6:.2f} MB, max |activation| {biggest:.2f}")


# ----------------------------------------------------------------------------------------------
# (b) tiny random checkpoints
# ----------------------------------------------------------------------------------------------


def train_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS, trainer)
    return tok


@torch.no_grad()
def randomise(model, gen: torch.Generator):
    """Weights far from HF's 0.02-std init, so that attention patterns and norms are not trivial
    and any indexing mistake shows up in the outputs."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
        elif name.endswith(".bias"):
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def make_tiny(name: str, model, tok: Tokenizer, out_dir: Path):
    if out_dir.exists():
        for child in ("model", "expected.safetensors", "cases.json"):
            path = out_dir / child
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save(str(model_dir / "tokenizer.json"))
    for extra in ("generation_config.json",):
        if (model_dir / extra).exists():
            (model_dir / extra).unlink()

    # Reload from disk so the fixture reflects exactly what is saved.
    model = type(model).from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    n_layers = model.config.num_hidden_layers
    every = list(range(n_layers))
    tensors: dict[str, torch.Tensor] = {}
    docs = []
    for k, text in enumerate(TINY_TEXTS):
        ids = tok.encode(text).ids
        docs.append(ids)
        ids_t = torch.tensor([ids], dtype=torch.int64)
        store, logits = run(model, ids_t, torch.ones_like(ids_t), every)
        check_resid_chain(store, n_layers)
        tensors[f"doc{k}/ids"] = ids_t[0].clone()
        for hook, value in store.items():
            if not hook.endswith("hook_resid_pre"):  # = previous block's resid_post (checked)
                tensors[f"doc{k}/{hook}"] = value[0].contiguous()
        tensors[f"doc{k}/logits"] = logits[0].contiguous()

    seq = max(len(d) for d in docs)
    ids_b = torch.zeros((len(docs), seq), dtype=torch.int64)
    mask_b = torch.zeros((len(docs), seq), dtype=torch.int64)
    for k, d in enumerate(docs):
        ids_b[k, : len(d)] = torch.tensor(d)
        mask_b[k, : len(d)] = 1
    store, logits = run(model, ids_b, mask_b, [])
    tensors["batch/ids"] = ids_b
    tensors["batch/mask"] = mask_b
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    tensors[f"batch/{last}"] = store[last].contiguous()
    tensors["batch/logits"] = logits.contiguous()

    save_file(tensors, out_dir / "expected.safetensors")
    (out_dir / "cases.json").write_text(json.dumps({"texts": TINY_TEXTS}, indent=2) + "\n")
    size = sum(p.stat().st_size for p in [out_dir / "expected.safetensors", *(out_dir / "model").iterdir()])
    print(f"{name}: {[len(d) for d in docs]} tokens, {size / 1e6:.2f} MB")


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf.py's `LlamaModel.permute` (HF rotate_half rows -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "input_layernorm": "attn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_attention_layernorm": "ffn_norm",
}


def write_gguf(arch: str, model_dir: Path, tok: Tokenizer, path: Path):
    """An f32 GGUF of a saved HF model, laid out as llama.cpp's converter does."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    weights = load_file(model_dir / "model.safetensors")
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(cfg["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    if arch == "llama":
        writer.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    writer.add_vocab_size(cfg["vocab_size"])
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = {t["content"] for t in data["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2" if arch == "llama" else "qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    for name, tensor in weights.items():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"
        if arch == "llama" and ".attn_q." in gname:
            tensor = llama_cpp_permute(tensor, n_head)
        elif arch == "llama" and ".attn_k." in gname:
            tensor = llama_cpp_permute(tensor, n_kv)
        writer.add_tensor(gname, tensor.float().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # transformers' GGUF loader must give back the very same model.
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    from_gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ours = dict(from_gguf.named_parameters())
    for name, p in hf.named_parameters():
        assert torch.equal(p, ours[name]), name
    hf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TINY_TEXTS:
        assert hf_tok(text)["input_ids"] == tok.encode(text).ids, text
    print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, transformers reloads it exactly")


def make_tiny_all():
    tok = train_tokenizer(320)
    vocab = tok.get_vocab_size()
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
    )

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    cfg = LlamaConfig(**common, tie_word_embeddings=True, rope_theta=10000.0)
    model = LlamaForCausalLM(cfg)
    randomise(model, gen)
    make_tiny("tiny-llama", model, tok, FIXTURES / "tiny-llama")
    write_gguf("llama", FIXTURES / "tiny-llama" / "model", tok, FIXTURES / "tiny-llama" / "tiny-llama.f32.gguf")

    cfg = LlamaConfig(
        **common,
        head_dim=32,
        tie_word_embeddings=False,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    )
    model = LlamaForCausalLM(cfg)
    randomise(model, gen)
    make_tiny("tiny-llama/untied", model, tok, FIXTURES / "tiny-llama" / "untied")

    cfg = MistralConfig(**common, sliding_window=4, tie_word_embeddings=False, rope_theta=10000.0)
    model = MistralForCausalLM(cfg)
    randomise(model, gen)
    make_tiny("tiny-llama/mistral", model, tok, FIXTURES / "tiny-llama" / "mistral")

    cfg = Qwen2Config(**common, tie_word_embeddings=False, rope_theta=1000000.0)
    model = Qwen2ForCausalLM(cfg)
    randomise(model, gen)
    make_tiny("tiny-qwen2", model, tok, FIXTURES / "tiny-qwen2")
    write_gguf("qwen2", FIXTURES / "tiny-qwen2" / "model", tok, FIXTURES / "tiny-qwen2" / "tiny-qwen2.f32.gguf")


if __name__ == "__main__":
    torch.set_num_threads(1)
    make_tiny_all()
    make_smollm2()
