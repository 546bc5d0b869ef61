#!/usr/bin/env python3
"""Golden fixture for LoRA sequence classification (src/train/lora.rs, tests/lora.rs).

A PEFT-free PyTorch check of the LoRA math on the packaged all-MiniLM-L6-v2 (HF `BertModel`,
float64, eager attention): every `attention.self.{query,key,value}` of the 6 layers gets

    y = x Wᵀ + b + (alpha / r) · (x Aᵀ) Bᵀ

and the classifier is `logits = z Wₕᵀ + bₕ` on the [CLS] last hidden state z. The adapter is
drawn here (rank 1 to keep the fixture small; A ~ U(±1/√in) as PEFT, B ~ N(0, 0.05) instead of
zero so that it changes the outputs) and written with PEFT's tensor names, so the Rust test also
checks that `SequenceClassifier::load_adapter` reads a file it did not write.

Writes tests/fixtures/lora/
  peft_rank1/adapter_model.safetensors   base_model.model.encoder.layer.{i}.attention.self.{q,k,v}
                                         .lora_{A,B}.weight, base_model.model.classifier.{weight,bias}
                                         (float32)
  peft_rank1/adapter_config.json         PEFT LoraConfig fields + the `replens` head block
  expected.safetensors                   float64: `logits`, `features` (LoRA), `merged_logits`
                                         (W + (alpha/r) B A folded into the weights), `base_logits`
                                         (no adapter, same head), one row per sentence, each
                                         sentence run alone (no padding)
  sentences.json                         the texts

Run:  /opt/ref/venv/bin/python scripts/reference/lora_reference.py
"""

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
MINILM_DIR = ROOT / "models" / "all-MiniLM-L6-v2"
OUT = ROOT / "tests" / "fixtures" / "lora"

SENTENCES = [
    "Shares in the bank rose after strong quarterly profits.",
    "The striker scored twice in the second half.",
    "Hello world.",
    "Parliament will vote on the new budget next week, the minister said.",
]
RANK = 1
ALPHA = 4.0
N_CLASSES = 3
TARGETS = ["query", "key", "value"]
MAX_LEN = 64


def main():
    torch.manual_seed(20261126)
    tok = AutoTokenizer.from_pretrained(MINILM_DIR)
    model = AutoModel.from_pretrained(MINILM_DIR, attn_implementation="eager").double().eval()
    d = model.config.hidden_size
    scaling = ALPHA / RANK

    adapter = {}
    for i, layer in enumerate(model.encoder.layer):
        for name in TARGETS:
            lin = getattr(layer.attention.self, name)
            out_dim, in_dim = lin.weight.shape
            bound = 1.0 / math.sqrt(in_dim)
            a = torch.empty(RANK, in_dim).uniform_(-bound, bound)
            b = torch.randn(out_dim, RANK) * 0.05
            key = f"base_model.model.encoder.layer.{i}.attention.self.{name}"
            adapter[f"{key}.lora_A.weight"] = a.float().contiguous()
            adapter[f"{key}.lora_B.weight"] = b.float().contiguous()
    head_w = (torch.randn(N_CLASSES, d) * 0.5).float()
    head_b = (torch.randn(N_CLASSES) * 0.1).float()
    adapter["base_model.model.classifier.weight"] = head_w.contiguous()
    adapter["base_model.model.classifier.bias"] = head_b.contiguous()

    def run(with_lora: bool, merged: bool):
        """CLS features and logits, one sentence at a time, float64."""
        originals = {}
        for i, layer in enumerate(model.encoder.layer):
            for name in TARGETS:
                lin = getattr(layer.attention.self, name)
                key = f"base_model.model.encoder.layer.{i}.attention.self.{name}"
                a = adapter[f"{key}.lora_A.weight"].double()
                b = adapter[f"{key}.lora_B.weight"].double()
                if merged:
                    originals[(i, name)] = lin.weight.data.clone()
                    lin.weight.data += scaling * (b @ a)
                elif with_lora:
                    def fwd(x, lin=lin, a=a, b=b):
                        return torch.nn.functional.linear(x, lin.weight, lin.bias) + scaling * (
                            (x @ a.T) @ b.T
                        )

                    lin.forward = fwd
        feats, logits = [], []
        with torch.no_grad():
            for s in SENTENCES:
                enc = tok(s, return_tensors="pt", truncation=True, max_length=MAX_LEN)
                out = model(**enc).last_hidden_state[0, 0]
                feats.append(out)
                logits.append(out @ head_w.double().T + head_b.double())
        # restore
        for i, layer in enumerate(model.encoder.layer):
            for name in TARGETS:
                lin = getattr(layer.attention.self, name)
                if "forward" in lin.__dict__:
                    del lin.forward
                if (i, name) in originals:
                    lin.weight.data = originals[(i, name)]
        return torch.stack(feats), torch.stack(logits)

    base_feats, base_logits = run(False, False)
    feats, logits = run(True, False)
    _, merged_logits = run(False, True)
    _, base_again = run(False, False)
    assert torch.equal(base_logits, base_again), "restoring the base model failed"
    print("max |logits - base|:", (logits - base_logits).abs().max().item())
    print("max |merged - lora|:", (merged_logits - logits).abs().max().item())

    (OUT / "peft_rank1").mkdir(parents=True, exist_ok=True)
    save_file(adapter, OUT / "peft_rank1" / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": "minilm",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": TARGETS,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": ["classifier"],
        "inference_mode": True,
        "replens": {
            "n_classes": N_CLASSES,
            "pooling": "cls",
            "max_len": MAX_LEN,
            "precision": "f64",
            "seed": 0,
        },
    }
    (OUT / "peft_rank1" / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(
        {
            "logits": logits.contiguous(),
            "features": feats.contiguous(),
            "merged_logits": merged_logits.contiguous(),
            "base_logits": base_logits.contiguous(),
        },
        OUT / "expected.safetensors",
    )
    (OUT / "sentences.json").write_text(json.dumps(SENTENCES, indent=2) + "\n")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(p.relative_to(ROOT), p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
