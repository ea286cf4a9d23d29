"""A model named as a GGUF file: a `.gguf` path, or `ollama:NAME[:TAG]` in the local Ollama store.
What the name points at, read without converting anything (models/gguf.py converts it).

    is_gguf(model)               the name is one of those two forms
    resolve(model, base_dir)     the GGUF file (FileNotFoundError / ValueError naming what and where)
    problem(model, base_dir)     '' or that message, plus an architecture transformers cannot
                                 dequantise (config validation at submit: config/rules.py)
    header(path)                 {"architecture", "context_length"} from the file's metadata

An Ollama name resolves through the store's manifests (`$OLLAMA_MODELS`, else ~/.ollama/models):
manifests/registry.ollama.ai/library/NAME/TAG (`ns/NAME`: that namespace; `host/ns/NAME`: that
registry), whose layer of media type application/vnd.ollama.image.model names the GGUF blob
(blobs/sha256-<digest>). The metadata is read with the `gguf` package's reader (llama.cpp's own),
once per file version (path, size, mtime) in this process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

OLLAMA_PREFIX = "ollama:"
MODEL_LAYER = "application/vnd.ollama.image.model"
MAGIC = b"GGUF"

_headers: dict[tuple, dict] = {}


def is_gguf(model) -> bool:
    return isinstance(model, str) and (model.startswith(OLLAMA_PREFIX) or model.lower().endswith(".gguf"))


def ollama_store() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def resolve(model: str, base_dir: Optional[Union[str, Path]] = None) -> Path:
    """The GGUF file `model` names: a file that starts with the GGUF magic."""
    if model.startswith(OLLAMA_PREFIX):
        path = _ollama_blob(model[len(OLLAMA_PREFIX):])
    else:
        path = Path(model).expanduser()
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        if not path.exists():
            raise FileNotFoundError(f"model {model!r}: no GGUF file {path}")
    if not path.is_file():
        raise ValueError(f"model {model!r}: {path} is not a file (a GGUF model is one .gguf file)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise PermissionError(f"model {model!r}: cannot read {path} ({e.strerror})") from None
    if magic != MAGIC:
        raise ValueError(f"model {model!r}: {path} is not a GGUF file (it does not start with {MAGIC!r})")
    return path


def _ollama_blob(name: str) -> Path:
    store = ollama_store()
    ref = OLLAMA_PREFIX + name
    model, _, tag = name.partition(":")
    parts = [p for p in model.split("/") if p]
    if not parts or len(parts) > 3 or any(p in (".", "..") for p in parts) or "/" in tag:
        raise ValueError(f"model {ref!r}: not an Ollama model name (ollama:NAME[:TAG], e.g. ollama:llama3.2:1b)")
    parts = ["registry.ollama.ai", "library"][:3 - len(parts)] + parts
    manifest = store.joinpath("manifests", *parts, tag or "latest")
    where = f"the Ollama store {store} ($OLLAMA_MODELS, else ~/.ollama/models)"
    if not manifest.is_file():
        have = _ollama_names(store)
        raise FileNotFoundError(f"model {ref!r}: no such model in {where}: no manifest {manifest}. "
                                + (f"It holds: {', '.join(have[:12])}" if have else "It holds no models")
                                + f"; `ollama pull {model}:{tag or 'latest'}` fetches it")
    try:
        layers = json.loads(manifest.read_text()).get("layers") or []
        digest = next(layer["digest"] for layer in layers if layer.get("mediaType") == MODEL_LAYER)
    except (OSError, ValueError, AttributeError, KeyError, TypeError, StopIteration):
        raise ValueError(f"model {ref!r}: its manifest {manifest} names no model layer ({MODEL_LAYER})") from None
    blob = store / "blobs" / str(digest).replace(":", "-")
    if not blob.exists():
        raise FileNotFoundError(f"model {ref!r}: its manifest {manifest} names blob {blob}, which is missing "
                                f"from {where}; `ollama pull {model}:{tag or 'latest'}` fetches it again")
    return blob


def _ollama_names(store: Path) -> list[str]:
    root = store / "manifests"
    names = []
    for f in sorted(root.glob("*/*/*/*")) if root.is_dir() else []:
        host, ns, name = f.parts[-4:-1]
        prefix = "" if host == "registry.ollama.ai" and ns == "library" else \
            (f"{ns}/" if host == "registry.ollama.ai" else f"{host}/{ns}/")
        names.append(f"{OLLAMA_PREFIX}{prefix}{name}:{f.name}")
    return names


def header(path: Path) -> dict:
    """The file's architecture and context length (gguf's reader, memoised per file version)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _headers:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))

        def field(name):
            f = reader.get_field(name)
            return f.contents() if f is not None else None

        arch = field("general.architecture") or ""
        ctx = field(f"{arch}.context_length")
        _headers[key] = {"architecture": arch, "context_length": int(ctx) if isinstance(ctx, int) else None}
    return _headers[key]


def supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def check(model: str, base_dir: Optional[Union[str, Path]] = None) -> Path:
    """`resolve`, and the architecture transformers can dequantise: the GGUF file, else the error."""
    path = resolve(model, base_dir)
    try:
        arch = header(path)["architecture"]
    except Exception as e:  # noqa: BLE001 - a damaged or truncated file: gguf's reader says why
        raise ValueError(f"model {model!r}: the GGUF file {path} cannot be read ({type(e).__name__}: {e})") from None
    supported = supported_architectures()
    if arch not in supported:
        raise ValueError(f"model {model!r}: the GGUF file {path} holds architecture {arch or '(none)'!r}, which "
                         f"transformers cannot dequantise; supported: {', '.join(supported)}")
    return path


def problem(model: str, base_dir: Optional[Union[str, Path]] = None) -> str:
    """'' when `check` passes, else its message."""
    try:
        check(model, base_dir)
    except (OSError, ValueError) as e:
        return str(e)
    return ""
