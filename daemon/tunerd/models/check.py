"""What a request names, checked in the request's own thread before anything reaches the device
worker (issue 16, findings 5 and 8): cheap file-system and cache look-ups, no model loaded, no
network asked.

    check_model(model)    a local model folder (config.json), a model in the Hugging Face cache, a
                          GGUF model (gguf_file.check), or a hub id the daemon may fetch (online); else FileNotFoundError (NOT_FOUND) or
                          ValueError (INVALID_ARGUMENT) saying what was tried
    check_adapter(path)   an adapter folder whose adapter_config.json parses and whose safetensors
                          files are whole (integrity.file_problem); else ValueError naming the damaged file

A file (`/etc/passwd`), a device (`/dev/zero`) or a folder without config.json (`~`) is refused
here, so no backend ever opens it (reading /dev/zero would never end).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..gguf_file import check, is_gguf
from ..integrity import file_problem

MODEL_FOLDER_NEEDS = "a model folder holds config.json and its weights (*.safetensors), as save_pretrained writes it"
ADAPTER_FILES = ("adapter_model.safetensors", "adapters.safetensors", "added_tokens.safetensors")
ADAPTER_CONFIGS = ("adapter_config.json",)


def looks_local(model: str) -> bool:
    """A name meant as a path: absolute, relative (./, ../), home (~), or one that exists here."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or os.path.lexists(model)


def check_model(model: str) -> None:
    if is_gguf(model):   # a .gguf file or ollama:NAME: that file, GGUF, an architecture transformers reads
        check(model)
        return
    if looks_local(model):
        return _check_folder(model)
    if _in_cache(model):
        return
    from huggingface_hub import constants

    from .. import hub
    hub.require(f"model {model!r}", fix="use a local model folder, or start tunerd where the hub can be reached "
                "to download it", detail=f"was not found: no local folder {os.path.abspath(model)}; not in the "
                f"Hugging Face cache ({constants.HF_HUB_CACHE})")
    # reachable: models.download.fetch asks the hub (NOT_FOUND for an unknown repo) in the request's thread


def _check_folder(model: str) -> None:
    path = Path(model).expanduser()
    shown = f"{model!r}" if str(path) == model else f"{model!r} ({path})"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"model {shown}: no local folder of that name ({MODEL_FOLDER_NEEDS})") from None
    except OSError as e:
        raise ValueError(f"model {shown}: cannot be read ({e.strerror}); {MODEL_FOLDER_NEEDS}") from None
    import stat
    if not stat.S_ISDIR(st.st_mode):
        kind = "a file" if stat.S_ISREG(st.st_mode) else "not a regular file or folder (a device, a pipe or a socket)"
        raise ValueError(f"model {shown} is {kind}, not a model folder; {MODEL_FOLDER_NEEDS}")
    cfg = path / "config.json"
    try:
        is_file = cfg.is_file()
    except OSError:
        is_file = False
    if not is_file:
        if not os.access(path, os.R_OK | os.X_OK):
            raise PermissionError(f"model {shown}: the daemon may not read this folder")
        raise ValueError(f"model {shown} is a folder without config.json, not a model folder; {MODEL_FOLDER_NEEDS}")


def _in_cache(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the hub would not accept ("a b"): not cached
        return False


def check_adapter(path: str) -> None:
    """ValueError naming the file when an adapter folder's config or tensors are damaged."""
    folder = Path(path)
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"adapter {path} is a file, not an adapter folder (adapter_config.json and "
                             "adapter_model.safetensors)")
        raise FileNotFoundError(f"adapter {path}: no such folder")
    for sub in (folder, folder / "mlx"):
        for name in ADAPTER_CONFIGS + ADAPTER_FILES:
            f = sub / name
            if f.is_file():
                problem = file_problem(f) or _not_an_object(f)
                if problem:
                    raise ValueError(f"adapter file {f} is damaged: {problem}; export or train the adapter again")


def _not_an_object(f: Path) -> str:
    """adapter_config.json must hold a JSON object ('' when it does)."""
    if f.suffix != ".json":
        return ""
    data = json.loads(f.read_text())
    return "" if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"
