"""Resolve a training config: YAML (with `_base_` inheritance) + typed fields + `key=value`
overrides -> a validated `TrainConfig`.

Unknown keys are errors that name the closest valid key; every problem is reported at once
(`ConfigError.problems`), like torchtune's `tune validate`.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .debug import apply_debug
from .rules import validate
from .schema import DataConfig, DistributedConfig, TrainConfig


class ConfigError(ValueError):
    def __init__(self, problems: list[str], source: str = ""):
        self.problems = problems
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursively for nested mappings (the data block)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: Union[str, Path], _seen: Optional[set] = None) -> dict:
    """Read a YAML config, following `_base_` (a path or a list, relative to the file)."""
    path = Path(path).expanduser().resolve()
    _seen = set() if _seen is None else _seen
    if path in _seen:
        raise ConfigError([f"_base_ cycle through {path}"])
    _seen.add(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(["is a directory; give the YAML file inside it (e.g. config.yaml)"], str(path))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError([f"not a UTF-8 text file ({e.reason} at byte {e.start})"], str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"invalid YAML ({getattr(e, 'problem', e)})"], f"{path}{line}") from None
    if not isinstance(doc, dict):
        raise ConfigError(["top level must be a mapping of keys to values"], str(path))
    bases = doc.pop("_base_", None)
    merged: dict = {}
    for b in ([bases] if isinstance(bases, str) else bases or []):
        merged = merge(merged, read_yaml(path.parent / b, _seen))
    return merge(merged, doc)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`lora_r=8`, `data.train=a.jsonl`, `lora_target_modules=[q_proj,v_proj]` -> (keys, value)."""
    if "=" not in text:
        raise ConfigError([f"override {text!r} is not key=value"])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError([f"override {text!r}: the value is not valid YAML "
                           f"({getattr(e, 'problem', None) or e}); quote it, e.g. {key}='\"...\"'"]) from None
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError([f"override {text!r}: empty key"])
    return keys, value


def apply_overrides(doc: dict, overrides: list[str], problems: Optional[list[str]] = None) -> dict:
    """Overrides on top of `doc`. With a `problems` list, bad overrides are added to it (and
    skipped) instead of raising, so every problem is reported at once."""
    doc = dict(doc)
    found: list[str] = []
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ConfigError as e:
            found += e.problems
            continue
        node = doc
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is not None and not isinstance(node.get(k), dict):
                found.append(f"override {text!r}: {'.'.join(keys[:i + 1])} is a value "
                             f"({node[k]!r}), not a section with keys")
                break
            node[k] = dict(node.get(k) or {})
            node = node[k]
        else:
            node[keys[-1]] = value
    if found and problems is None:
        raise ConfigError(found)
    if problems is not None:
        problems += found
    return doc


def _coerce(name: str, value: Any, hint: Any, problems: list[str]) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _coerce(name, value, args[0], problems)
        if bool in args and isinstance(value, str) and value.lower() in ("true", "false", "auto"):
            return {"true": True, "false": False}.get(value.lower(), "auto")   # bool | "auto" (packing)
        return value  # e.g. list | str
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        problems.append(f"{name}: expected true/false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            problems.append(f"{name}: expected a number, got {value!r}")
            return value
        try:
            out = hint(value) if hint is float else int(float(value)) if float(value).is_integer() else None
        except (TypeError, ValueError):
            out = None
        if out is None:
            problems.append(f"{name}: expected {'an integer' if hint is int else 'a number'}, got {value!r}")
            return value
        return out
    if hint is str and not isinstance(value, str):
        return str(value)
    return value


def _build(cls, doc: dict, prefix: str, problems: list[str]):
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in doc.items():
        full = prefix + key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {prefix + close[0]}?" if close else ""
            problems.append(f"{full}: unknown key{hint}")
            continue
        if key == "data":
            if isinstance(value, (str, list)):
                value = {"train": value}
            if not isinstance(value, dict):
                problems.append("data: expected a mapping (train, validation, format, ...)")
                continue
            kwargs[key] = _build(DataConfig, value, "data.", problems)
            continue
        if key == "distributed":
            if isinstance(value, int) and not isinstance(value, bool):
                value = {"nproc_per_node": value}   # distributed: 2
            if value is None:
                continue
            if not isinstance(value, dict):
                problems.append("distributed: expected a mapping (backend, nproc_per_node, hosts, ...)")
                continue
            if isinstance(value.get("hosts"), str):   # hosts: mac1,mac2 (mlx.launch's spelling)
                value = {**value, "hosts": [h.strip() for h in value["hosts"].split(",") if h.strip()]}
            kwargs[key] = _build(DistributedConfig, value, "distributed.", problems)
            continue
        if hints[key] is not dict and isinstance(value, dict):
            problems.append(f"{full}: expected a single value, not a mapping (got {value!r})")
            continue
        before = len(problems)
        coerced = _coerce(full, value, hints[key], problems)
        if len(problems) == before:  # a value that failed keeps the default, so the rules (rules.py)
            kwargs[key] = coerced     # check the rest without tripping over it
    return cls(**kwargs)


def from_dict(doc: dict, source: str = "", base_dir: Optional[Union[str, Path]] = None,
              check_paths: bool = False, problems: Optional[list[str]] = None) -> TrainConfig:
    """A validated TrainConfig, or a ConfigError with every problem (those in `problems`, e.g.
    from overrides, included)."""
    problems = list(problems or [])
    cfg = expand_home(_build(TrainConfig, doc, "", problems))
    problems += validate(cfg, base_dir, check_paths)
    if problems:
        raise ConfigError(problems, source)
    return apply_debug(cfg)


def from_record(doc: dict) -> TrainConfig:
    """The TrainConfig of a job's stored config, which its submit validated (from_dict, with the
    paths): built again (types coerced, debug applied), not validated a second time. A key this
    build does not know, or a value of the wrong type, is still a ConfigError."""
    problems: list[str] = []
    cfg = _build(TrainConfig, doc, "", problems)
    if problems:
        raise ConfigError(problems)
    return apply_debug(cfg)


_PATH_KEYS = ("model", "output_dir", "resume_from_checkpoint")
_DATA_PATH_KEYS = ("train", "validation", "test", "retain")


def expand_home(cfg: TrainConfig) -> TrainConfig:
    """`~` and `~user` at the start of a config's paths (model, output_dir,
    resume_from_checkpoint, data sources) become the home directory, as a shell would expand
    them, and `${TUNER_HOME}` / `$TUNER_HOME` the daemon's home (tunerd/__main__ sets it; else
    paths.default_home), so configs/examples/demo.yaml finds the demo wherever --home put it;
    relative paths stay relative (to the submitter's directory). Hub ids never start with `~` or
    `$`, so they are left alone."""
    def expand(value):
        if isinstance(value, str):
            if value.startswith("$"):
                from ..paths import default_home
                home = str(default_home())
                value = value.replace("${TUNER_HOME}", home, 1) if value.startswith("${TUNER_HOME}") else \
                    value.replace("$TUNER_HOME", home, 1) if value.startswith("$TUNER_HOME") else value
            return os.path.expanduser(value) if value.startswith("~") else value
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, dict) and "path" in value:
            return {**value, "path": expand(value["path"])}
        return value

    for key in _PATH_KEYS:
        setattr(cfg, key, expand(getattr(cfg, key)))
    for key in _DATA_PATH_KEYS:
        setattr(cfg.data, key, expand(getattr(cfg.data, key)))
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None,
                doc: Optional[dict] = None, base_dir: Optional[Union[str, Path]] = None,
                check_paths: bool = False) -> TrainConfig:
    """The one way to resolve a config: file (with _base_), then a dict layer, then overrides.
    Problems that an override caused name it ("(from --set lora_r=0)")."""
    merged = read_yaml(path) if path else {}
    if doc:
        merged = merge(merged, doc)
    if isinstance(merged.get("data"), (str, list)):
        merged["data"] = {"train": merged["data"]}
    problems: list[str] = []
    merged = apply_overrides(merged, overrides or [], problems)
    try:
        return from_dict(merged, str(path or ""), base_dir, check_paths, problems)
    except ConfigError as e:
        raise ConfigError([_blame(msg, overrides or []) for msg in e.problems], str(path or "")) from None


def _blame(problem: str, overrides: list[str]) -> str:
    """Name the override (the last one, as that one won) that set the key a problem is about."""
    if problem.startswith("override "):
        return problem
    field = problem.split(":", 1)[0].split(" ", 1)[0]
    for text in reversed(overrides):
        key = text.split("=", 1)[0].strip()
        if key == field or key.startswith(field + ".") or field.startswith(key + "."):
            return f"{problem} (from --set {text})"
    return problem
