"""Shared fixtures: tiny models and data built once per test run, offline."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def daemon():
    """A real tunerd on its own short home, one per test module."""
    from daemon_utils import DaemonProcess, short_home

    d = DaemonProcess(short_home()).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def served():
    """A real tunerd that also serves the OpenAI-compatible HTTP API on a loopback port, and the
    official `openai` client for it: (daemon, client, port), one per test module."""
    openai = pytest.importorskip("openai")
    from daemon_utils import DaemonProcess, free_port, short_home

    port = free_port()
    d = DaemonProcess(short_home(), "--http", f"127.0.0.1:{port}").start()
    token = (d.home / "token").read_text().strip()   # the bearer token, required on loopback too
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0, timeout=120)
    yield d, client, port
    d.stop()


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory):
    """The demo's tiny Llama model + synthetic facts data: {"model", "train", "valid", "rows"}."""
    from tunerd.demo.tiny import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def tiny_model_dir(demo_bundle):
    return demo_bundle["model"]


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_bf16_model_dir(tiny_model_dir, tmp_path_factory):
    """The demo model saved in bfloat16, as real checkpoints are (config.json says so)."""
    import shutil
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bf16") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(out)
    for f in Path(tiny_model_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return str(out)
