#!/usr/bin/env python3
"""Golden fixtures for the BERT-family encoders (src/model/bert.rs, tests/parity_bert.rs).

Reference oracle only: the Rust tests read what this writes and never need Python at run time.

Writes
  tests/fixtures/minilm/sentences.json         the input texts
  tests/fixtures/minilm/expected.safetensors   HF token ids, masks and every hook of all 6 layers of
                                               the packaged models/all-MiniLM-L6-v2, per sentence and
                                               for the right-padded batch (real tokens of each text),
                                               from HF in float64 (`f64.single.{s}.<hook>`,
                                               `f64.batch.{s}.<hook>`) and in float32 for the single
                                               texts (`f32.single.{s}.<hook>`), plus the
                                               sentence-transformers mean-pooled, L2-normalised
                                               embedding ("pooled_mean_normalized", float32 HF);
                                               see `expected_tensors` for why float64
  tests/fixtures/tiny-roberta/                 a tiny random RobertaForMaskedLM (2 layers, d=32, 4 heads,
                                               gelu_new; saved with save_pretrained(safe_serialization=True)
                                               so weights carry the `roberta.` prefix and an unused
                                               lm_head), a tiny byte-level BPE tokenizer.json trained with
                                               the `tokenizers` library, and expected/hooks.safetensors
                                               (the expected values live in a sub-directory so that the
                                               loader, which reads every top-level *.safetensors as
                                               weights, does not pick them up).

Hook names follow TransformerLens' HookedEncoder, captured with PyTorch forward hooks:
  hook_embed                 output of `embeddings` (after its LayerNorm) = input of layer 0
  blocks.i.hook_resid_pre    input of encoder.layer[i] (checked equal to the previous output, not stored)
  blocks.i.hook_attn_out     output of encoder.layer[i].attention.output.dense (before residual + LN)
  blocks.i.hook_mlp_out      output of encoder.layer[i].output.dense (before residual + LN)
  blocks.i.hook_resid_post   output of encoder.layer[i]

Run:  /opt/ref/venv/bin/python scripts/reference/make_bert_fixtures.py
"""

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer, RobertaConfig, RobertaForMaskedLM

ROOT = Path(__file__).resolve().parents[2]
MINILM_DIR = ROOT / "models" / "all-MiniLM-L6-v2"
FIX = ROOT / "tests" / "fixtures"

MINILM_SENTENCES = [
    "Hello world.",
    "The cat sat on the mat.",
    "Layers change representations!",
    "A quick brown fox jumps over the lazy dog.",
]

ROBERTA_SENTENCES = [
    "the cat sat",
    "a dog ran on the mat.",
    "Birds sing in the morning, cats sleep.",
    "hello",
]

ROBERTA_CORPUS = [
    "the cat sat on the mat.",
    "a dog ran in the park and the cat slept.",
    "birds sing in the morning; cats sleep in the afternoon.",
    "hello world, hello model, hello tokenizer.",
    "Representations of language models change from layer to layer.",
    "The quick brown fox jumps over the lazy dog.",
] * 20


def capture(encoder_model, n_layers):
    """Register forward hooks on a Bert/Roberta base model; returns (store, handles)."""
    store = {}
    handles = []

    def out_hook(name):
        def f(_mod, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            store[name] = t.detach().clone()

        return f

    def pre_hook(name):
        def f(_mod, args, kwargs):
            t = args[0] if args else kwargs["hidden_states"]
            store[name] = t.detach().clone()

        return f

    handles.append(encoder_model.embeddings.register_forward_hook(out_hook("hook_embed")))
    for i, layer in enumerate(encoder_model.encoder.layer[:n_layers]):
        handles.append(
            layer.register_forward_pre_hook(pre_hook(f"blocks.{i}.hook_resid_pre"), with_kwargs=True)
        )
        handles.append(
            layer.attention.output.dense.register_forward_hook(out_hook(f"blocks.{i}.hook_attn_out"))
        )
        handles.append(layer.output.dense.register_forward_hook(out_hook(f"blocks.{i}.hook_mlp_out")))
        handles.append(layer.register_forward_hook(out_hook(f"blocks.{i}.hook_resid_post")))
    return store, handles


def hooks_for(encoder_model, n_layers, input_ids, attention_mask):
    store, handles = capture(encoder_model, n_layers)
    with torch.no_grad():
        out = encoder_model(input_ids=input_ids, attention_mask=attention_mask)
    for h in handles:
        h.remove()
    return store, out.last_hidden_state


def stored_hook(name):
    """resid_pre is not stored: HF's layer i receives exactly the tensor layer i-1 returned
    (resid_pre(0) = hook_embed), which `expected_tensors` asserts; the tests derive it."""
    return not name.endswith("hook_resid_pre")


def check_resid_pre(store, n_layers):
    for i in range(n_layers):
        prev = store["hook_embed"] if i == 0 else store[f"blocks.{i - 1}.hook_resid_post"]
        assert torch.equal(store[f"blocks.{i}.hook_resid_pre"], prev), i


def expected_tensors(model32, model64, n_layers, singles, batch_ids, batch_mask):
    """singles: list of 1-D int64 id tensors; batch_*: (b, t) int64 as HF pads them.

    Golden values (`f64.single.*`, `f64.batch.*`) are HF's forward run in float64 and rounded
    to float32: HF's own float32 outputs carry rounding noise of up to ~2e-4 at the outlier
    features of the MLP output (|x| ~ 190 in MiniLM, and larger on a padded batch whose GEMM
    shapes differ), so they cannot serve as a 1e-4 reference for a padded batch. The float32
    run of each text alone (`f32.single.*`) and the float32 pooled embedding are kept too, to
    check against what an ordinary HF float32 user gets.
    """
    tensors = {}
    noise = {"single": 0.0, "batch": 0.0, "batch_vs_single_f32": 0.0}
    singles32 = []
    for s, ids in enumerate(singles):
        ids = ids.unsqueeze(0)
        tensors[f"single.{s}.input_ids"] = ids[0].contiguous()
        st32, _ = hooks_for(model32, n_layers, ids, torch.ones_like(ids))
        st64, _ = hooks_for(model64, n_layers, ids, torch.ones_like(ids))
        check_resid_pre(st32, n_layers)
        check_resid_pre(st64, n_layers)
        singles32.append(st32)
        for name in st32:
            if stored_hook(name):
                tensors[f"f32.single.{s}.{name}"] = st32[name][0].float().contiguous()
                tensors[f"f64.single.{s}.{name}"] = st64[name][0].float().contiguous()
                noise["single"] = max(noise["single"], (st32[name] - st64[name]).abs().max().item())
    st32, last32 = hooks_for(model32, n_layers, batch_ids, batch_mask)
    st64, _ = hooks_for(model64, n_layers, batch_ids, batch_mask)
    check_resid_pre(st64, n_layers)
    tensors["batch.input_ids"] = batch_ids.contiguous()
    tensors["batch.attention_mask"] = batch_mask.contiguous()
    # Padded positions carry no meaning: keep only each text's real tokens (fixture size).
    for s, ids in enumerate(singles):
        n = int(batch_mask[s].sum())
        assert n == len(ids)
        for name in st64:
            if stored_hook(name):
                tensors[f"f64.batch.{s}.{name}"] = st64[name][s, :n].float().contiguous()
                d32 = st32[name][s, :n].double()
                noise["batch"] = max(noise["batch"], (d32 - st64[name][s, :n]).abs().max().item())
                d = (d32 - singles32[s][name][0].double()).abs().max().item()
                noise["batch_vs_single_f32"] = max(noise["batch_vs_single_f32"], d)
    # sentence-transformers Pooling(mean) + Normalize: mean over real tokens, then L2 norm.
    m = batch_mask.unsqueeze(-1).float()
    pooled = (last32 * m).sum(1) / m.sum(1).clamp(min=1e-9)
    tensors["pooled_mean_normalized"] = torch.nn.functional.normalize(pooled, p=2, dim=1).contiguous()
    print(
        "  HF float32 vs HF float64, max |diff| over stored hooks: single %.2e, padded batch %.2e;"
        " HF float32 padded batch vs HF float32 single: %.2e"
        % (noise["single"], noise["batch"], noise["batch_vs_single_f32"])
    )
    return tensors


def minilm():
    if not (MINILM_DIR / "model.safetensors").exists():
        raise SystemExit(f"{MINILM_DIR} is missing: run scripts/setup first")
    tok = AutoTokenizer.from_pretrained(MINILM_DIR)
    # Eager attention: the textbook additive-mask softmax the Rust port implements.
    load = lambda dt: AutoModel.from_pretrained(MINILM_DIR, dtype=dt, attn_implementation="eager").eval()
    model32, model64 = load(torch.float32), load(torch.float64)
    n_layers = model32.config.num_hidden_layers
    singles = [torch.tensor(tok(s)["input_ids"], dtype=torch.int64) for s in MINILM_SENTENCES]
    batch = tok(MINILM_SENTENCES, padding=True, return_tensors="pt")
    print("minilm:")
    tensors = expected_tensors(
        model32, model64, n_layers, singles, batch["input_ids"].long(), batch["attention_mask"].long()
    )
    out = FIX / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "expected.safetensors"))
    (out / "sentences.json").write_text(json.dumps(MINILM_SENTENCES, indent=2) + "\n")
    print("  tokens per text", [len(s) for s in singles], ";", os.path.getsize(out / "expected.safetensors"), "bytes")


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(ROBERTA_CORPUS, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True
    )
    return tok


def tiny_roberta():
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    assert tok.token_to_id("<pad>") == 1
    cfg = RobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu_new",
        max_position_embeddings=66,  # 64 usable positions: RoBERTa starts counting at pad_token_id + 1
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        # Larger than HF's 0.02 so that attention and MLPs move the residual stream visibly.
        initializer_range=0.2,
    )
    model = RobertaForMaskedLM(cfg).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        # HF inits LayerNorm to ones/zeros; perturb so the test also checks gain/bias handling.
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    out = FIX / "tiny-roberta"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))

    encs = [tok.encode(s) for s in ROBERTA_SENTENCES]
    singles = [torch.tensor(e.ids, dtype=torch.int64) for e in encs]
    t = max(len(e.ids) for e in encs)
    batch_ids = torch.full((len(encs), t), cfg.pad_token_id, dtype=torch.int64)
    batch_mask = torch.zeros((len(encs), t), dtype=torch.int64)
    for i, e in enumerate(encs):
        batch_ids[i, : len(e.ids)] = torch.tensor(e.ids)
        batch_mask[i, : len(e.ids)] = 1
    print("tiny-roberta:")
    model64 = copy.deepcopy(model.roberta).double()
    tensors = expected_tensors(model.roberta, model64, cfg.num_hidden_layers, singles, batch_ids, batch_mask)
    (out / "expected").mkdir()
    save_file(tensors, str(out / "expected" / "hooks.safetensors"))
    (out / "expected" / "sentences.json").write_text(json.dumps(ROBERTA_SENTENCES, indent=2) + "\n")
    for f in (out / "model.safetensors", out / "expected" / "hooks.safetensors"):
        f.chmod(0o644)
    print("  tokens per text", [len(e.ids) for e in encs], "; files:", sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    minilm()
    tiny_roberta()
