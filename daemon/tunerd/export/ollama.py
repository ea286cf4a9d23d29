"""An Ollama model folder: the fused model as GGUF + a Modelfile (`tunerctl export --format ollama`).

    export_ollama(model, adapter, out_dir, quant="f16", force=False, name="", system=None) -> Path
    modelfile(name, gguf_name, tokenizer, system, modelfile_path) -> (text, warnings)
    create_command(name, modelfile_path) -> list[str]   (`ollama create NAME -f DIR/Modelfile`)

`out_dir` (files.write_output_dir: new, empty, exported to before, or `force`) gets `NAME.gguf`
(export/gguf.py, fused de-quantised) and a `Modelfile`:
- `FROM ./NAME.gguf` (Ollama reads a relative FROM next to the Modelfile, so the folder can move);
- `TEMPLATE`: the tokenizer's chat template as a Go template (export/ollama_template.py). A chat
  template it does not recognise leaves TEMPLATE out, with a warning: Ollama then picks a template
  from the GGUF's embedded one (`tokenizer.chat_template`);
- `PARAMETER stop` for each end-of-turn token: the template's and every EOS token of the model's
  generation config (an end-of-turn token added in training among them, export/fuse.py);
- `SYSTEM`: the training system prompt (the job's `data.system_prompt`), else the chat template's
  own default (SmolLM2's), so that Ollama, which puts SYSTEM first when a chat has no system
  message, renders what the tokenizer would.
The Modelfile's header comments hold the exact create line (`# create: ollama create ...`) and any
warning (`# warning: ...`): `tunerctl export` prints both and runs the line for `--create`.
"""
from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path

from ..files import write_output_dir
from .ollama_template import UnknownTemplate, ollama_template

log = logging.getLogger(__name__)
KIND = "ollama export"
MODELFILE = "Modelfile"
CREATE, WARNING = "# create: ", "# warning: "
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*(:[a-z0-9._-]+)?$")


def model_name(name: str, out_dir: Path) -> str:
    """`name`, else the folder's name lowercased with other characters as `-`; ValueError for a
    name Ollama would refuse."""
    name = name or re.sub(r"[^a-z0-9._-]+", "-", out_dir.name.lower()).strip("-._") or "tuned"
    if not _NAME.match(name):
        raise ValueError(f"name {name!r}: an Ollama model name is lowercase letters, digits, '.', '_' "
                         "and '-', optionally NAMESPACE/NAME and :TAG")
    return name


def create_command(name: str, modelfile_path) -> list[str]:
    return ["ollama", "create", name, "-f", str(modelfile_path)]


def export_ollama(model, adapter, out_dir, quant: str = "f16", force: bool = False, name: str = "",
                  system=None, progress=None) -> Path:
    """Fuse `adapter` into `model`, write the GGUF and the Modelfile into `out_dir`; `system` is
    the training system prompt (None: read from a job's config.json beside the adapter)."""
    from transformers import AutoTokenizer

    from ..files import check_destination
    from .gguf import check_quant, export_gguf

    out = Path(out_dir).expanduser()
    quant = check_quant(quant)
    name = model_name(name, out)
    check_destination(out, KIND, force=force)   # before the slow fuse; write_output_dir checks again
    if system is None:
        system = _training_system_prompt(Path(adapter))
    gguf_name = name.rsplit("/", 1)[-1].replace(":", "-") + ".gguf"

    def fill(tmp: Path) -> None:
        def then(fused: Path) -> None:
            tokenizer = AutoTokenizer.from_pretrained(str(fused))
            text, warnings = modelfile(name, gguf_name, tokenizer, system, out / MODELFILE,
                                       _eos_tokens(fused, tokenizer))
            for w in warnings:
                log.warning("ollama export %s: %s", out, w)
            (tmp / MODELFILE).write_text(text, encoding="utf-8")
        export_gguf(model, adapter, tmp / gguf_name, quant=quant, force=True, progress=progress, then=then)

    return write_output_dir(out, fill, KIND, force=force, source=str(adapter), base=str(model), name=name)


def modelfile(name: str, gguf_name: str, tokenizer, system, modelfile_path, eos=()) -> tuple[str, list]:
    """The Modelfile text and its warnings; `eos`: more stop tokens (the GGUF's EOS)."""
    warnings, lines = [], []
    try:
        t = ollama_template(tokenizer)
        template, stops, default_system = t.template, list(t.stops), t.default_system
    except UnknownTemplate as e:
        template, stops, default_system = None, [], ""
        warnings.append(f"{e}: no TEMPLATE written, Ollama will use the GGUF's embedded chat template")
    for tok in eos:
        if tok and tok not in stops:
            stops.append(tok)
    system = system or default_system
    lines.append(f"# Ollama Modelfile written by MacTuner ({name}).")
    lines.append(CREATE + shlex.join(create_command(name, modelfile_path)))
    lines += [WARNING + w for w in warnings]
    lines.append(f"FROM ./{gguf_name}")
    if template is not None:
        lines.append(f'TEMPLATE """{_triple(template, "TEMPLATE")}"""')
    for s in stops:
        lines.append(f"PARAMETER stop {json.dumps(s)}")
    if system:
        lines.append(f'SYSTEM """{_triple(system, "SYSTEM")}"""')
    return "\n".join(lines) + "\n", warnings


def _triple(text: str, what: str) -> str:
    if '"""' in text:
        raise ValueError(f'{what}: holds """, which a Modelfile cannot quote')
    return text


def _eos_tokens(folder: Path, tokenizer) -> list[str]:
    """The tokenizer's EOS and every EOS id of the generation config (where fuse adds a trained
    end-of-turn token), as text."""
    ids = []
    gen = folder / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids = [eos] if isinstance(eos, int) else list(eos or [])
    tokens = [tokenizer.eos_token] if tokenizer.eos_token else []
    return tokens + [tokenizer.convert_ids_to_tokens(int(i)) for i in ids]


def _training_system_prompt(adapter: Path):
    """`data.system_prompt` of the job whose output holds `adapter` (its resolved config.json, one
    or two folders up), else None."""
    for folder in (adapter, adapter.parent, adapter.parent.parent):
        cfg = folder / "config.json"
        try:
            doc = json.loads(cfg.read_text()) if cfg.is_file() else None
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
            return doc["data"].get("system_prompt")
    return None
