"""Which backend runs which model family (config.json's `model_type`), asked without loading a model.

    FAMILIES                                the families tests/test_families.py trains, saves (both
                                            adapter layouts), reloads and chats with on both backends
    cannot_run(model_config, backend)       why `backend` cannot run this model, or None
    family_problem(model_config, backend)   that, as a submit error naming the family and the
                                            backend that can run it; None when `backend` can
    check_family(model, backend)            raise it at submit and before a chat load (a local or
                                            hub-cached model only)

Outside FAMILIES a model runs where its library has its architecture: mlx-lm's
`mlx_lm/models/<model_type>.py` for mlx, transformers' causal-LM classes (or the model's own code,
`auto_map`) for torch. A backend that is not installed is not asked (None: it may).
"""
from __future__ import annotations

import importlib.util
from typing import Optional

# model_type -> the family's name; each runs on both backends (tests/test_families.py, README "Backends")
FAMILIES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma 2",
            "gemma3_text": "Gemma 3 (text)", "phi3": "Phi-3", "gpt2": "GPT-2"}
_LIBRARY = {"mlx": "mlx_lm", "torch": "transformers"}


def _installed(backend: str) -> bool:
    return importlib.util.find_spec(_LIBRARY[backend]) is not None


def cannot_run(model_config: dict, backend: str) -> Optional[str]:
    """Why `backend` cannot run a model with this config.json, or None (it can, or it is not
    installed here to ask)."""
    kind = model_config.get("model_type")
    if not kind or not _installed(backend):
        return None
    if backend == "mlx":
        from mlx_lm.utils import MODEL_REMAPPING

        if model_config.get("model_file"):   # the model's own mlx code (trust_remote_code)
            return None
        if importlib.util.find_spec(f"mlx_lm.models.{MODEL_REMAPPING.get(kind, kind)}") is None:
            return f"mlx-lm has no {kind} architecture"
        from .mlx.model import legacy_config_keys

        c = {**model_config, **legacy_config_keys(model_config)}   # what mlx-lm will read
        inner, embd = c.get("n_inner"), c.get("n_embd")
        if kind == "gpt2" and inner is not None and inner != 4 * (embd or 0):
            return f"mlx-lm's GPT-2 MLP is 4 x n_embd = {4 * (embd or 0)} wide, this model's n_inner is {inner}"
        pattern, layers = c.get("sliding_window_pattern", 6), c.get("num_hidden_layers", 26)
        if kind == "gemma3_text" and layers < pattern:
            return (f"mlx-lm's Gemma 3 needs at least sliding_window_pattern = {pattern} layers, this model "
                    f"has {layers}")
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in (model_config.get("auto_map") or {}):
        return None
    return f"transformers has no causal-LM class for {kind}"


def family_problem(model_config: dict, backend: str, auto: bool = False) -> Optional[str]:
    """`auto`: the backend is `backend: auto`'s choice (the message says so)."""
    why = cannot_run(model_config, backend)
    if why is None:
        return None
    kind = model_config.get("model_type")
    family = f"{FAMILIES[kind]} ({kind})" if kind in FAMILIES else repr(kind)
    other = "torch" if backend == "mlx" else "mlx"
    if not _installed(other):
        fix = f"the {other} backend may (pip install 'mactuner[{other}]', then backend: {other})"
    elif cannot_run(model_config, other) is None:
        fix = f"the {other} backend runs it: set backend: {other}"
    else:
        fix = f"nor can the {other} backend ({cannot_run(model_config, other)})"
    chosen = " (chosen by backend: auto)" if auto else ""
    return f"model: the {backend} backend{chosen} cannot run a model of family {family} ({why}); {fix}"


def check_family(model: str, backend: str, revision: Optional[str] = None, auto: bool = False) -> None:
    """Refuse (ConfigError: INVALID_ARGUMENT) a model whose family `backend` cannot run, before any
    slow work: a job at submit (Core.submit), a model before it is loaded to serve chat
    (models/registry.py). Needs the model's config.json: a local model, or one in the hub cache;
    others fail at load with the library's own message. `auto`: `backend` is `backend: auto`'s choice."""
    from ..config.loader import ConfigError
    from ..model_config import read_model_config

    doc = read_model_config(model, revision)
    if doc is None:
        return
    problem = family_problem(doc, backend, auto=auto)
    if problem:
        raise ConfigError([problem])
