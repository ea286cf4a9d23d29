"""Shared fixtures: tiny models and data built once per test run, offline."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
