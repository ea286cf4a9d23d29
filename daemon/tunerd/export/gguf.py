"""Write a GGUF file (llama.cpp, Ollama, LM Studio) from a Hugging Face model folder, usually the
fused model export/fuse.py writes (safetensors + config.json + tokenizer).

    write_gguf(model_dir, out_file, quant="f16", force=False, name="") -> Path
    export_gguf(model, adapter, out_file, quant="f16", force=False) -> Path   (fuse, then write)

Everything GGUF-specific comes from the `gguf` package, llama.cpp's own Python package: the writer
(`gguf.GGUFWriter`), the tensor names (`gguf.get_tensor_name_map`), the special tokens, merges and
chat template (`gguf.SpecialVocab`) and the q8_0/bf16 encoders (`gguf.quants.quantize`). The
vocabulary is written as llama.cpp's convert_hf_to_gguf.py writes a byte-level BPE ("gpt2")
tokenizer: every id up to the model's vocab size, as the tokenizer spells it, control tokens for
special added tokens, user-defined for other added ones, `[PADn]` for ids the tokenizer lacks.

llama.cpp's llama architecture (Llama, Mistral, SmolLM2) applies rotary embeddings to interleaved
pairs where Hugging Face rotates the two halves of each head, so the Q and K projections are
permuted per head (`_permute`; readers such as transformers' GGUF loader undo it). Qwen2/Qwen3 and
Phi-3 use NEOX-style rotary in llama.cpp, which is Hugging Face's layout: no permutation.

Quant types: f16, bf16 and q8_0 (1-D tensors, norms and biases, stay f32, and a matrix whose rows
are not a whole number of q8_0 blocks is written f16, as llama.cpp does). Others (q4_k_m ...) need
llama.cpp's `llama-quantize` or `ollama create --quantize` on the f16 file (GGUFError says so).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..files import OutputRefused, atomic_write_file

QUANTS = ("f16", "bf16", "q8_0")
OTHER_TOOLS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_1", "q4_k_s", "q4_k_m", "q5_0", "q5_1",
               "q5_k_s", "q5_k_m", "q6_k", "iq2_xxs", "iq3_xxs", "iq4_nl", "iq4_xs", "tq1_0", "tq2_0")
# model_type -> (gguf MODEL_ARCH name, Q/K permuted for llama.cpp's rotary layout)
ARCHS = {"llama": ("LLAMA", True), "mistral": ("LLAMA", True), "qwen2": ("QWEN2", False),
         "qwen3": ("QWEN3", False), "phi3": ("PHI3", False)}


class GGUFError(ValueError):
    """A model or quant type this writer cannot turn into GGUF; the message says what is supported."""


def check_quant(quant: str) -> str:
    q = (quant or "f16").lower()
    if q in QUANTS:
        return q
    if q in OTHER_TOOLS:
        raise GGUFError(f"quant {quant}: the gguf package cannot write it; export f16 here, then run "
                        f"llama.cpp's `llama-quantize FILE.gguf OUT.gguf {q.upper()}`, or "
                        f"`ollama create NAME --quantize {q} -f Modelfile` (supported here: {', '.join(QUANTS)})")
    raise GGUFError(f"quant {quant}: not a quant type this export writes; supported: {', '.join(QUANTS)}")


def check_arch(config: dict) -> str:
    mt = config.get("model_type", "")
    if mt not in ARCHS:
        raise GGUFError(f"GGUF export: architecture {mt or '(no model_type)'} is not supported; supported "
                        f"model types: {', '.join(sorted(ARCHS))}")
    kind = _rope_kind(config)
    if kind != "default" and not (kind == "llama3" and ARCHS[mt][0] == "LLAMA"):
        raise GGUFError(f"GGUF export: rope scaling {kind!r} ({mt}) is not supported yet; supported: "
                        "default rotary embeddings, and Llama 3's (llama3) on llama")
    return mt


def export_gguf(model, adapter, out_file, quant: str = "f16", force: bool = False, progress=None,
                then=None) -> Path:
    """Fuse `adapter` into `model` (export/fuse.py, de-quantised) in a temporary folder next to
    `out_file`, then write that as GGUF; the quant type and architecture are checked first.
    `progress` (export/progress.py Reporter): the fuse, then each tensor converted, then the write.
    `then(fused_folder)`, if given, runs after the write, before the fused folder is removed."""
    from ..model_config import read_model_config
    from .fuse import fuse

    quant = check_quant(quant)
    config = read_model_config(str(model))
    if config:
        check_arch(config)
    out = _check_file(out_file, force)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.fuse-", dir=out.parent) as tmp:
        if progress:
            progress("fuse", message=f"fusing the adapter into {model}")
        folder = fuse(model, adapter, Path(tmp) / "fused", dequantize=True)
        written = write_gguf(folder, out, quant, force=force, name=out.stem, progress=progress)
        if then is not None:
            then(folder)
        return written


def _check_file(out_file, force: bool) -> Path:
    out = Path(out_file).expanduser()
    if out.is_dir():
        raise OutputRefused(f"{out} is a folder; the GGUF output is a file (e.g. {out / 'model.gguf'})")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such folder for the GGUF file")
    if os.path.lexists(out) and not force:
        raise OutputRefused(f"{out} exists; pass --force to replace it")
    return out


def write_gguf(model_dir, out_file, quant: str = "f16", force: bool = False, name: str = "",
               progress=None) -> Path:
    """Write `model_dir` as a GGUF file at `out_file` (files.atomic_write_file: a new file, or
    `force` to replace one; else OutputRefused), `general.name` `name` (default: the folder's);
    GGUFError for an unsupported architecture, tokenizer or quant type. `progress`: stage
    "convert" per tensor (bytes of the source tensors done), then "write"."""
    import gguf

    src, out = Path(model_dir).expanduser(), Path(out_file).expanduser()
    quant = check_quant(quant)
    config = json.loads((src / "config.json").read_text())
    mt = check_arch(config)
    _check_file(out, force)
    arch_name, permute = ARCHS[mt]
    arch = getattr(gguf.MODEL_ARCH, arch_name)

    def write(tmp: str) -> None:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        w.add_name(name or src.name)   # not the bare model_type: transformers reads a GGUF named "mistral" wrong
        n_vocab = _add_hparams(w, config, quant, gguf)
        _add_vocab(w, src, n_vocab, gguf)
        _add_tensors(w, src, config, arch, permute, quant, gguf, progress)
        if _rope_kind(config) == "llama3":
            w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS], _llama3_rope_factors(src))
        if progress:
            progress("write", message=f"writing {out.name}")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return atomic_write_file(out, write)


def _rope_kind(config: dict) -> str:
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    return rope.get("rope_type") or rope.get("type") or "default"


def _llama3_rope_factors(src: Path) -> np.ndarray:
    """llama.cpp's `rope_freqs` for Llama 3.x rope scaling: what each rotary frequency is divided
    by, taken from transformers' own llama3 frequencies (so the two cannot disagree)."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = AutoConfig.from_pretrained(str(src))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    base = (cfg.rope_parameters or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    plain = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    return (plain / scaled.double().numpy()).astype(np.float32)


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _add_hparams(w, config: dict, quant: str, gguf) -> int:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    n_vocab = config["vocab_size"]
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(config.get("num_key_value_heads") or heads)
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(_rope_theta(config))
    w.add_rope_dimension_count(int(head_dim * config.get("partial_rotary_factor", 1.0)))
    if config.get("original_max_position_embeddings"):   # Phi-3's
        w.add_rope_scaling_orig_ctx_len(config["original_max_position_embeddings"])
    if config.get("head_dim"):   # as convert_hf_to_gguf.py: llama.cpp reads the head size from these
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(n_vocab)
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    w.add_file_type(ftype)
    return n_vocab


def _pre_tokenizer(src: Path) -> str:
    """llama.cpp's name for how text is split before BPE: byte-level with GPT-2's regex ("gpt2"),
    or a Split regex known as Llama 3's or Qwen2's; else GGUFError."""
    tj = src / "tokenizer.json"
    pre = json.loads(tj.read_text()).get("pre_tokenizer") if tj.exists() else None
    if not pre:
        raise GGUFError(f"GGUF export: {src} has no tokenizer.json with a pre-tokenizer; supported: "
                        "byte-level BPE tokenizers (Llama 3, Mistral, SmolLM2, Qwen2/3)")
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if [p["type"] for p in parts] == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt2"
    split = next((p for p in parts if p["type"] == "Split"), None)
    regex = ((split or {}).get("pattern") or {}).get("Regex", "")
    if regex.startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"):
        return "llama-bpe"
    if regex.startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"):
        return "qwen2"
    if [p["type"] for p in parts] == ["Digits", "ByteLevel"]:
        return "smollm"
    raise GGUFError(f"GGUF export: the pre-tokenizer of {src} is not one llama.cpp names here; supported: "
                    "byte-level (GPT-2), Llama 3's, Qwen2's and SmolLM's")


def _add_vocab(w, src: Path, n_vocab: int, gguf) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    if not tok.is_fast or json.loads((src / "tokenizer.json").read_text())["model"]["type"] != "BPE":
        raise GGUFError("GGUF export: only byte-level BPE tokenizers are supported")
    pre = _pre_tokenizer(src)
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(max(n_vocab, len(reverse))):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(src, load_merges=True, n_vocab=len(tokens))
    if tok.chat_template and not special.chat_template:
        special.chat_template = tok.chat_template
    special.add_to_gguf(w)


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves of each head) -> llama.cpp's (interleaved pairs)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _encode(name: str, data: np.ndarray, quant: str, gguf):
    """(array, raw_dtype) for the writer: f32 for 1-D tensors, else the quant type."""
    q = gguf.GGMLQuantizationType
    if data.ndim == 1 or name.endswith("_norm.weight"):
        return data.astype(np.float32), None
    if quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
        return gguf.quants.quantize(data, q.Q8_0), q.Q8_0
    if quant == "bf16":
        return gguf.quants.quantize(data, q.BF16), q.BF16
    return data.astype(np.float16), None


def _add_tensors(w, src: Path, config: dict, arch, permute: bool, quant: str, gguf, progress=None) -> None:
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise GGUFError(f"GGUF export: no *.safetensors in {src}")
    total, done = sum(p.stat().st_size for p in files), 0   # the source's bytes (headers too, a little)
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise GGUFError(f"GGUF export: tensor {hf_name} has no GGUF name for "
                                    f"{config['model_type']}")
                tensor = f.get_tensor(hf_name)
                done += tensor.numel() * tensor.element_size()
                data = tensor.float().numpy()
                if permute and hf_name.endswith("q_proj.weight"):
                    data = _permute(data, heads)
                elif permute and hf_name.endswith("k_proj.weight"):
                    data = _permute(data, kv_heads)
                arr, raw = _encode(name, data, quant, gguf)
                w.add_tensor(name, arr, raw_dtype=raw)
                if progress:
                    progress("convert", min(done, total), total, message=name)
    if progress:
        progress("convert", total, total, message="all tensors converted")
