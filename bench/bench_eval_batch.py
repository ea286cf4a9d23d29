"""Benchmark (issue 21): evaluation's generation in batches vs row by row, in process, on the real
SmolLM2-135M (tests/real_model.py, offline), greedy, 32 new tokens a row; checks that every batch
size gives the same replies as row by row.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python bench/bench_eval_batch.py torch 64
"""
import sys, time
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "client"), str(ROOT / "tests")]
from real_model import smollm2_checkpoint
from tunerd.backends.base import ModelSpec
from tunerd.backends.generation import Sampling
from tunerd.backends.registry import get_backend
from tunerd.evaluation.generation import generate_all
name = sys.argv[1]; n = int(sys.argv[2])
be = get_backend(name)
be.load(ModelSpec(model=str(smollm2_checkpoint("float32" if name == "torch" else "bfloat16")), backend=name))
qs = ["What is the capital of France?", "Name three colors.", "Explain gravity briefly.", "What is 2+2?",
      "Who wrote Hamlet?", "Describe a cat.", "What is water made of?", "Why is the sky blue?"]
ps = [be.tokenizer(qs[i % 8] + f" (question {i})")["input_ids"] for i in range(n)]
g = Sampling(temperature=0.0, max_tokens=32)
out = {}
for bs in (1, 8, 16):
    be._prompt_cache.clear()
    t = time.perf_counter(); texts = generate_all(be, ps, g, batch_size=bs); dt = time.perf_counter() - t
    out[bs] = texts
    print(f"{name} rows={n} batch={bs}: {dt:.1f}s ({n/dt:.2f} rows/s)", flush=True)
print("same as row by row:", all(out[b] == out[1] for b in out))
