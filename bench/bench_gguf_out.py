"""GGUF out on the real SmolLM2-135M-Instruct (tests/real_model.py): for each quant type, the
export time, the file size, and how closely the GGUF read back by transformers' GGUF loader
follows the Hugging Face model: greedy tokens agreed (of --tokens, per prompt, forced to run past
EOS) and the largest logit difference on the prompt.

    PYTHONPATH=daemon:client:tests python bench/bench_gguf_out.py [--tokens 32] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain in one sentence what a neural network is.", "List three primary colors.",
           "How many legs does a spider have?"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default="")
    ap.add_argument("--quant", action="append", default=[])
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from real_model import smollm2_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunerd.export.gguf import write_gguf

    folder = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(str(folder))
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)["input_ids"] for p in PROMPTS]

    def run(model, x):
        with torch.no_grad():
            out = model.generate(x, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False)
            return out[0, x.shape[1]:].tolist(), model(x).logits

    want = [run(ref, x) for x in ids]
    out_dir = Path(a.out or tempfile.mkdtemp(prefix="gguf-out-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for quant in a.quant or ["f16", "bf16", "q8_0"]:
        t = time.perf_counter()
        path = write_gguf(folder, out_dir / f"smollm2-{quant}.gguf", quant, force=True)
        secs = time.perf_counter() - t
        back = AutoModelForCausalLM.from_pretrained(str(out_dir), gguf_file=path.name, dtype=torch.float32).eval()
        agree, diff = [], 0.0
        for x, (w_tokens, w_logits) in zip(ids, want):
            g_tokens, g_logits = run(back, x)
            n = next((i for i, (p, q) in enumerate(zip(g_tokens, w_tokens)) if p != q), len(w_tokens))
            agree.append(n)
            diff = max(diff, (g_logits - w_logits).abs().max().item())
        rows.append({"quant": quant, "export_s": round(secs, 1), "mb": round(path.stat().st_size / 1e6, 1),
                     "tokens_agreed": agree, "of": a.tokens, "max_logit_diff": round(diff, 4),
                     "reply": tok.decode(run(back, ids[0])[0], skip_special_tokens=True)[:60]})
        print(json.dumps(rows[-1]), flush=True)
        del back
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
