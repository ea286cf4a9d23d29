"""Benchmark: generation through the daemon vs in-process mlx-lm and Hugging Face, same model,
adapter, prompt, dtype and device.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python bench/bench_chat.py [--tokens 128] [--repeat 3] [--out bench/results/chat_cpu.json]

Builds a small random Llama (hidden 384, 6 layers, GQA; ~14M params) and a LoRA adapter (r 8 on
q/k/v/o, random B so it changes the output), then for each path, each in its own process, greedy
decoding of --tokens tokens from a ~120-token prompt (plain completion: no chat template), after
one warm-up request (each request's prompt starts with another word, so the daemon's prompt cache
does not skip the measured prefill):
  - daemon_mlx / daemon_torch : `Generate` over the Unix socket of a running tunerd (model and
                                adapter resident), times taken by the client from the request
  - mlx_lm                    : mlx_lm.stream_generate on mlx_lm.load(model, adapter_path)
  - hf                        : transformers `generate` on PeftModel(model, adapter) with a streamer
TTFT is the time to the first generated token; decode tok/s counts the tokens after the first
over the time after the first. The daemon's dtype is the one it resolved (`dtype: auto`) and the
in-process runs use the same. Also: wall time of a cold `mlx_lm generate` command vs a resident
`tunerctl generate -p` command for one token (process start included on both sides).
Results: JSON (stdout last line, and --out) plus a table.

    python bench/bench_chat.py --concurrent [--tokens 64] [--out bench/results/chat_concurrent_cpu.json]

Concurrent clients (issue 21) on the real SmolLM2-135M-Instruct (tests/real_model.py, float32):
the same 8 different questions asked by 1, 4 and 8 clients streaming greedy chats at once (each
client asks its share in turn: 8, 2 or 1 questions; after a warm-up), through the daemon over
gRPC and over its OpenAI-compatible HTTP API (torch and mlx backends), through `mlx_lm.server`
(its batched decoding) and with plain HF `generate` on the same prompts (left-padded batches of N,
one after another, the chat template applied). Aggregate tokens/s = all completion tokens / wall
time from the first request to the last reply's end; TTFT p50/p95 over the requests, as each
client saw it (HF: for batches of 1 only, through a streamer).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_results  # bench/common.py (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT / "client"), str(ROOT / "tests")]
WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ren", "su", "tav", "ul", "vex", "zor", "qui")
         for b in ("da", "ne", "ri", "mo", "lu", "tes", "pra", "go")]
PROMPT = " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(60))


def prompt(i: int) -> str:
    """The i-th request's prompt: a different first word each time, so the daemon's prompt cache
    (which reuses a previous request's common prefix) does not skip the prefill being measured."""
    return f"{WORDS[(11 * i) % len(WORDS)]} {PROMPT}"


def build(workdir: Path) -> dict:
    import random

    from test_shared_base import random_adapter
    from tunerd.demo.tiny import TinyModelSpec, build_tiny_model

    model = workdir / "model"
    if not (model / "config.json").exists():
        rng = random.Random(0)
        corpus = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(200)]
        build_tiny_model(model, corpus, TinyModelSpec(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                                                      num_key_value_heads=2, intermediate_size=1024,
                                                      vocab_size=1024, max_position_embeddings=1024))
    adapter = workdir / "adapter"
    if not (adapter / "adapter_config.json").exists():
        random_adapter(adapter, str(model), seed=1, r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    return {"model": str(model), "adapter": str(adapter)}


def timings(stamps: list[float], t0: float) -> dict:
    """stamps: arrival time of each generated token."""
    n = len(stamps)
    decode = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else 0.0
    return {"tokens": n, "ttft_seconds": stamps[0] - t0, "decode_tokens_per_second": decode}


def best(runs: list[dict]) -> dict:
    return {"tokens": runs[0]["tokens"], "ttft_seconds": statistics.median(r["ttft_seconds"] for r in runs),
            "decode_tokens_per_second": statistics.median(r["decode_tokens_per_second"] for r in runs),
            "runs": runs}


# ---- workers (each in its own process) ---------------------------------------------------------

def run_mlx_lm(model: str, adapter: str, dtype: str, tokens: int, repeat: int) -> dict:
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.utils import load

    m, tok = load(model, adapter_path=str(Path(adapter) / "mlx"))
    m.set_dtype(getattr(mx, dtype))
    runs = []
    for i in range(repeat + 1):
        ids = tok.encode(prompt(i))
        t0, stamps = time.perf_counter(), []
        for _ in stream_generate(m, tok, ids, max_tokens=tokens):
            stamps.append(time.perf_counter())
        if i:  # the first is the warm-up
            runs.append(timings(stamps, t0))
    return best(runs)


def run_hf(model: str, adapter: str, dtype: str, tokens: int, repeat: int) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tok = AutoTokenizer.from_pretrained(model)
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)),
                                  adapter).eval()

    class Stamps(BaseStreamer):
        def __init__(self):
            self.stamps, self.prompt_seen = [], False

        def put(self, value):
            if not self.prompt_seen:   # generate() first puts the prompt
                self.prompt_seen = True
                return
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    runs = []
    for i in range(repeat + 1):
        ids = torch.tensor([tok(prompt(i))["input_ids"]])
        s = Stamps()
        t0 = time.perf_counter()
        with torch.no_grad():
            m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                       streamer=s, pad_token_id=tok.pad_token_id)
        if i:
            runs.append(timings(s.stamps, t0))
    return best(runs)


def run_daemon(home: str, model: str, adapter: str, backend: str, tokens: int, repeat: int) -> dict:
    from tuner import Client

    client = Client.connect(home=home, timeout=600)
    runs = []
    for i in range(repeat + 1):
        t0, stamps, usage = time.perf_counter(), [], None
        for c in client.generate(prompt(i), model=model, adapter=adapter, backend=backend,
                                 sampling={"temperature": 0.0, "max_tokens": tokens}):
            if c.delta or c.finish_reason:
                stamps.append(time.perf_counter())
            if c.HasField("usage"):
                usage = c.usage
        if i:
            r = timings(stamps, t0)
            # chunks can hold several tokens (a held-back character): count the tokens the daemon made
            r["tokens"] = int(usage.completion_tokens)
            r["decode_tokens_per_second"] = (r["tokens"] - 1) / (stamps[-1] - stamps[0])
            r["daemon_tokens_per_second"] = usage.tokens_per_second
            runs.append(r)
    return best(runs)


def cold_vs_resident(home: str, model: str, adapter: str, backend: str) -> dict:
    env = dict(os.environ, TUNER_HOME=home)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", model, "--adapter-path",
                    str(Path(adapter) / "mlx"), "--prompt", PROMPT, "--max-tokens", "1", "--ignore-chat-template"],
                   capture_output=True, check=True, env=env)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunerctl", "--home", home, "generate", "--model", model, "--adapter",
                    adapter, "--backend", backend, "-p", PROMPT, "--max-tokens", "1"],
                   capture_output=True, check=True, env=env)
    resident = time.perf_counter() - t
    return {"cold_mlx_lm_generate_seconds": cold, "resident_tunerctl_generate_seconds": resident,
            "ratio": cold / resident}


def worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(line[-1][len("RESULT "):])


# ---- concurrent clients (issue 21) -----------------------------------------------------------

QUESTIONS = ["What is the capital of France?", "Write a short poem about the sea.",
             "Explain photosynthesis to a child.", "Give three tips for learning to code.",
             "Why is the sky blue?", "Describe a cat in two sentences.", "What is a prime number?",
             "How do airplanes fly?"]
CLIENTS = (1, 4, 8)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else 0.0


def at_once(one, n: int, requests: int = len(QUESTIONS)) -> dict:
    """`one(i)` -> (ttft seconds, completion tokens) for each of `requests` questions, asked by
    `n` clients started together, each asking its share one after another (so every row answers
    the same questions: the same tokens)."""
    import threading

    out: list = [None] * requests
    go = threading.Barrier(n + 1)

    def run(c):
        go.wait()
        for i in range(c, requests, n):
            try:
                out[i] = one(i)
            except Exception as e:  # noqa: BLE001 - reported in the row
                out[i] = e

    threads = [threading.Thread(target=run, args=(c,)) for c in range(n)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    errors = [repr(x) for x in out if isinstance(x, Exception)]
    if errors:
        return {"clients": n, "error": errors[0][-500:]}
    ttfts, tokens = [x[0] for x in out], sum(x[1] for x in out)
    return {"clients": n, "requests": requests, "tokens": tokens, "seconds": wall,
            "aggregate_tokens_per_second": tokens / wall,
            "ttft_p50_seconds": percentile(ttfts, 0.5), "ttft_p95_seconds": percentile(ttfts, 0.95)}


def grpc_client(home: str, model: str, backend: str, tokens: int):
    from tuner import Client

    client = Client.connect(home=home, timeout=600)

    def one(i: int):
        t0, first, n = time.perf_counter(), None, 0
        for c in client.chat([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], model=model,
                             backend=backend, sampling={"temperature": 0.0, "max_tokens": tokens}):
            if c.delta and first is None:
                first = time.perf_counter() - t0
            if c.finish_reason:
                n = int(c.usage.completion_tokens)
        return first or 0.0, n
    return one


def http_client(port: int, model: str, tokens: int, token: str = ""):
    """An OpenAI-compatible streaming chat client (tunerd --http, mlx_lm.server)."""
    import http.client

    def one(i: int):
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                           "temperature": 0.0, "max_tokens": tokens, "stream": True,
                           "stream_options": {"include_usage": True}})
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        t0, first, deltas, usage = time.perf_counter(), None, 0, None
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            for ch in ev.get("choices") or []:
                if (ch.get("delta") or {}).get("content"):
                    deltas += 1
                    if first is None:
                        first = time.perf_counter() - t0
            if ev.get("usage"):
                usage = ev["usage"]
        conn.close()
        return first or 0.0, int(usage["completion_tokens"]) if usage else deltas
    return one


def rows(one, warm: int = 1) -> list[dict]:
    for _ in range(warm):
        one(0)
    return [at_once(one, n) for n in CLIENTS]


def run_hf_batches(model: str, dtype: str, tokens: int) -> dict:
    """Plain HF `generate`: the N prompts as one left-padded batch, greedy, for each N in CLIENTS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    m = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    eos = {tok.eos_token_id} | set(m.generation_config.eos_token_id if isinstance(
        m.generation_config.eos_token_id, list) else [m.generation_config.eos_token_id])

    class First(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:   # the first put is the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    def batch(qs: list[int]) -> tuple[int, float, float]:
        """(tokens, seconds, ttft or -1) of one left-padded batch of these questions."""
        texts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i]}], tokenize=False,
                                         add_generation_prompt=True) for i in qs]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        st = First()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = m.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             streamer=st if len(qs) == 1 else None)
        wall = time.perf_counter() - t0
        count = 0
        for row in out[:, enc["input_ids"].shape[1]:].tolist():   # up to and including the first eos
            for t in row:
                count += 1
                if t in eos:
                    break
        return count, wall, (st.first - t0) if st.first else -1.0

    def row(n: int) -> dict:
        """The questions in batches of n, one batch after another (a static batch has no clients
        joining mid-way: its first token comes for all rows at once, after the batch's prefill)."""
        done = [batch(list(range(j, min(j + n, len(QUESTIONS))))) for j in range(0, len(QUESTIONS), n)]
        count, wall = sum(d[0] for d in done), sum(d[1] for d in done)
        ttfts = [d[2] for d in done if d[2] >= 0]
        return {"clients": n, "requests": len(QUESTIONS), "tokens": count, "seconds": wall,
                "aggregate_tokens_per_second": count / wall,
                "ttft_p50_seconds": percentile(ttfts, 0.5) if ttfts else None,
                "ttft_p95_seconds": percentile(ttfts, 0.95) if ttfts else None}

    batch([0])   # warm-up
    return {"rows": [row(n) for n in CLIENTS]}


def concurrent_main(a) -> None:
    from real_model import smollm2_checkpoint

    from daemon_utils import DaemonProcess, free_port, short_home
    from tuner.v1 import tuner_pb2 as pb

    model = str(smollm2_checkpoint("float32"))
    results = {"config": {"model": "SmolLM2-135M-Instruct (float32)", "tokens": a.tokens, "clients": CLIENTS,
                          "greedy": True}, "paths": {}}
    port = free_port()
    d = DaemonProcess(short_home(), "--http", f"127.0.0.1:{port}").start()
    try:
        token = (d.home / "token").read_text().strip()
        for backend in a.backends.split(","):
            st = d.stub().LoadModel(pb.LoadModelRequest(model=model, backend=backend))
            results["paths"][f"tunerd_grpc_{backend}"] = {"dtype": st.dtype, "rows": rows(
                grpc_client(str(d.home), model, backend, a.tokens))}
            results["paths"][f"tunerd_http_{backend}"] = {"dtype": st.dtype, "rows": rows(
                http_client(port, model, a.tokens, token))}   # the HTTP API: the resident backend of that model
            peak = max(m.peak_active_sequences for m in d.stub().ListModels(pb.ListModelsRequest()).models
                       if m.backend == backend)
            results["paths"][f"tunerd_grpc_{backend}"]["peak_active_sequences"] = peak
            d.stub().UnloadModel(pb.UnloadModelRequest(model=model, backend=backend))
    finally:
        d.stop()
    if not a.no_mlx_server:
        results["paths"]["mlx_lm_server"] = mlx_server_rows(model, a.tokens)
    if not a.no_hf:
        results["paths"]["hf_generate"] = {"dtype": "float32", **worker(
            ["--worker", "hf_batches", "--model", model, "--dtype", "float32", "--tokens", str(a.tokens)])}

    print(f"{'path':<20} {'clients':>7} {'tokens':>6} {'agg tok/s':>9} {'vs 1':>5} {'TTFT p50 ms':>11} "
          f"{'TTFT p95 ms':>11}")
    for name, p in results["paths"].items():
        if "error" in p:
            print(f"{name:<20} ERROR {p['error'][-400:]}")
            continue
        base = p["rows"][0].get("aggregate_tokens_per_second")
        for r in p["rows"]:
            if "error" in r:
                print(f"{name:<20} {r['clients']:>7} ERROR {r['error'][-300:]}")
                continue
            ms = (lambda v: f"{v * 1000:.0f}" if v is not None else "-")
            print(f"{name:<20} {r['clients']:>7} {r['tokens']:>6} {r['aggregate_tokens_per_second']:>9.1f} "
                  f"{r['aggregate_tokens_per_second'] / base:>4.1f}x {ms(r['ttft_p50_seconds']):>11} "
                  f"{ms(r['ttft_p95_seconds']):>11}")
    if a.out:
        write_results(a.out, results)
    print(json.dumps(results))


def mlx_server_rows(model: str, tokens: int) -> dict:
    """`mlx_lm.server` (its own batched decoding) on the same model and questions."""
    from daemon_utils import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", model, "--port", str(port),
                             "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import http.client
        deadline = time.time() + 180
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/v1/models")
                c.getresponse().read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    return {"error": (proc.stderr.read() or b"").decode()[-1000:] or "mlx_lm.server did not start"}
                time.sleep(0.5)
        return {"rows": rows(http_client(port, model, tokens))}
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=["mlx_lm", "hf", "daemon", "hf_batches"])
    ap.add_argument("--concurrent", action="store_true", help="1, 4 and 8 concurrent clients (issue 21)")
    ap.add_argument("--backends", default="torch,mlx", help="--concurrent: the daemon's backends")
    ap.add_argument("--no-mlx-server", action="store_true", help="--concurrent: skip mlx_lm.server")
    ap.add_argument("--no-hf", action="store_true", help="--concurrent: skip HF generate")
    ap.add_argument("--model")
    ap.add_argument("--adapter")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--home")
    ap.add_argument("--backend")
    a = ap.parse_args()
    if a.worker == "hf_batches":
        print("RESULT " + json.dumps(run_hf_batches(a.model, a.dtype, a.tokens)))
        return
    if a.concurrent:
        return concurrent_main(a)
    if a.worker:
        res = (run_mlx_lm(a.model, a.adapter, a.dtype, a.tokens, a.repeat) if a.worker == "mlx_lm" else
               run_hf(a.model, a.adapter, a.dtype, a.tokens, a.repeat) if a.worker == "hf" else
               run_daemon(a.home, a.model, a.adapter, a.backend, a.tokens, a.repeat))
        print("RESULT " + json.dumps(res))
        return

    from daemon_utils import DaemonProcess, short_home
    from tuner.v1 import tuner_pb2 as pb

    paths = build(Path(a.workdir or tempfile.mkdtemp(prefix="bench_chat_")))
    common = ["--model", paths["model"], "--adapter", paths["adapter"], "--tokens", str(a.tokens),
              "--repeat", str(a.repeat)]
    d = DaemonProcess(short_home()).start()
    results = {"config": {"model": "llama h384 L6 (~14M params), LoRA r8 q/k/v/o", "tokens": a.tokens,
                          "repeat": a.repeat, "prompt_words": len(PROMPT.split())}, "runs": {}}
    try:
        dtypes = {}
        for backend in ("mlx", "torch"):
            st = d.stub().LoadModel(pb.LoadModelRequest(model=paths["model"], backend=backend,
                                                        adapter=paths["adapter"]))
            dtypes[backend] = st.dtype
            results["runs"][f"daemon_{backend}"] = {
                "dtype": st.dtype, **worker(["--worker", "daemon", "--home", str(d.home), "--backend", backend,
                                             *common])}
        results["cold_vs_resident"] = cold_vs_resident(str(d.home), paths["model"], paths["adapter"], "mlx")
    finally:
        d.stop()
    results["runs"]["mlx_lm"] = {"dtype": dtypes["mlx"],
                                 **worker(["--worker", "mlx_lm", "--dtype", dtypes["mlx"], *common])}
    results["runs"]["hf"] = {"dtype": dtypes["torch"], **worker(["--worker", "hf", "--dtype", dtypes["torch"], *common])}

    ref = {"daemon_mlx": "mlx_lm", "daemon_torch": "hf"}
    print(f"{'path':<13} {'dtype':<9} {'tokens':>6} {'TTFT ms':>8} {'decode tok/s':>12} {'vs in-process':>13}")
    for name, r in results["runs"].items():
        if "error" in r:
            print(f"{name:<13} ERROR {r['error'][-400:]}")
            continue
        other = results["runs"].get(ref.get(name, ""), {})
        vs = (f"{r['decode_tokens_per_second'] / other['decode_tokens_per_second']:.2f}x"
              if other.get("decode_tokens_per_second") else "")
        print(f"{name:<13} {r['dtype']:<9} {r['tokens']:>6} {r['ttft_seconds'] * 1000:>8.1f} "
              f"{r['decode_tokens_per_second']:>12.1f} {vs:>13}")
    c = results["cold_vs_resident"]
    print(f"one token, process start included: cold `mlx_lm generate` {c['cold_mlx_lm_generate_seconds']:.2f}s, "
          f"resident `tunerctl generate` {c['resident_tunerctl_generate_seconds']:.2f}s ({c['ratio']:.1f}x)")
    if a.out:
        write_results(a.out, results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
