"""What Gemma 2 and Gemma 3 (text) need in a GGUF beyond export/gguf.py's Llama-shaped writer, the
way llama.cpp's convert_hf_to_gguf.py writes them and llama.cpp's loader reads them back.

    problem(config)              '' or why llama.cpp would run this Gemma differently (gguf.py raises it)
    normalized(config)           config.json through transformers' own config class (defaults, layer types)
    add_hparams(w, config)       head size, soft-capping, sliding window, rotary bases
    shift_norm(hf_name, data)    RMSNorm weights + 1
    is_sentencepiece(tok_json)   a BPE tokenizer with byte fallback (Gemma's), not byte-level
    add_vocab(w, src, n_vocab, gguf)   that vocabulary as llama.cpp's SentencePiece ("llama") one

- RMSNorm: Hugging Face's Gemma computes x * (1 + w), llama.cpp's x * w, so every norm weight
  (input/post-attention/pre- and post-feed-forward, final, and Gemma 3's q/k norms) is written + 1;
  transformers' GGUF loader takes the 1 off again.
- llama.cpp fixes what a Gemma config could vary: which layers slide (every 2nd layer global on
  gemma2, every 6th on gemma3), Gemma 3's local rotary base (10000), and the attention scale
  (1/sqrt(head size); 1/sqrt(hidden/heads) for the 27Bs, told apart by layer count). A config that
  differs is refused: the GGUF would load and answer differently.
- Vocabulary: Gemma's tokenizer is SentencePiece (BPE over characters, byte fallback), written as
  llama.cpp's "llama" model: every id as tokenizer.json spells it, a score per token (the rank of
  the first merge that makes it, negated: llama.cpp's tokenizer merges the best-scored pair first,
  which is the Hugging Face tokenizer's merge order), types NORMAL / BYTE (<0xNN>) / UNKNOWN /
  CONTROL (special added tokens) / USER_DEFINED (other added ones) / UNUSED ([PADn]), no space
  prefix (Gemma adds none), add_bos as the tokenizer does it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

# model_type -> (every how many layers one is global, layer count of the 27B, the rotary kinds allowed)
FAMILIES = {"gemma2": (2, 46, ("default",)), "gemma3_text": (6, 62, ("default", "linear"))}
LOCAL_ROPE_BASE = 10000.0   # llama.cpp's for Gemma 3's sliding layers
_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def normalized(config: dict) -> dict:
    """`config` as transformers reads it: defaults filled in, `layer_types`, and per-layer-type
    `rope_parameters` (older checkpoints say rope_theta / rope_local_base_freq / rope_scaling)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(**config).to_dict()


def _rope(config: dict, layer: str) -> dict:
    rope = config.get("rope_parameters") or {}
    return rope.get(layer, rope) if isinstance(rope.get(layer, rope), dict) else {}


def problem(config: dict) -> str:
    c = normalized(config)
    mt = c["model_type"]
    period, layers_27b, kinds = FAMILIES[mt]
    n = c["num_hidden_layers"]
    want = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n)]
    if list(c.get("layer_types") or want) != want:
        return (f"GGUF export: {mt} with layer types {c['layer_types']}: llama.cpp makes every {period}"
                f"{'nd' if period == 2 else 'th'} layer global and the others sliding")
    scalar, head = c.get("query_pre_attn_scalar"), c["head_dim"]
    if scalar not in (None, head) and not (n == layers_27b and scalar == c["hidden_size"] // c["num_attention_heads"]):
        return (f"GGUF export: {mt} with query_pre_attn_scalar {scalar}: llama.cpp scales attention by "
                f"1/sqrt(head_dim = {head}) (the 27B by 1/sqrt(hidden_size/heads))")
    kind = _rope(c, "full_attention").get("rope_type") or "default"
    if kind not in kinds:
        return f"GGUF export: rope scaling {kind!r} ({mt}) is not supported; supported: {', '.join(kinds)}"
    if mt == "gemma3_text":
        local = _rope(c, "sliding_attention")
        if float(local.get("rope_theta", LOCAL_ROPE_BASE)) != LOCAL_ROPE_BASE or (local.get("rope_type") or "default") != "default":
            return (f"GGUF export: gemma3 with sliding-layer rotary {local}: llama.cpp uses base "
                    f"{LOCAL_ROPE_BASE:g}, unscaled, on the sliding layers")
    return ""


def rope_theta(config: dict) -> float:
    """The global layers' rotary base (normalized config)."""
    return float(_rope(config, "full_attention").get("rope_theta") or 10000.0)


def add_hparams(w, config: dict, gguf) -> None:
    """The Gemma keys on top of gguf.py's common ones (`config` normalized)."""
    w.add_sliding_window(config["sliding_window"])
    if config.get("attn_logit_softcapping"):
        w.add_attn_logit_softcapping(config["attn_logit_softcapping"])
    if config.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(config["final_logit_softcapping"])
    if config["model_type"] == "gemma3_text":
        w.add_rope_freq_base_swa(float(_rope(config, "sliding_attention").get("rope_theta", LOCAL_ROPE_BASE)))
        glob = _rope(config, "full_attention")
        if (glob.get("rope_type") or "default") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(glob["factor"]))


def shift_norm(hf_name: str, data):
    return data + 1.0 if hf_name.endswith("norm.weight") else data


def is_sentencepiece(tokenizer_json: dict) -> bool:
    model = tokenizer_json.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def _space_prefix(tj: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (Llama 2 style); Gemma's does not."""
    def parts(x):
        return (x or {}).get("normalizers") or (x or {}).get("pretokenizers") or ([x] if x else [])
    norm = any(p.get("type") == "Prepend" for p in parts(tj.get("normalizer")))
    meta = any(p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never"
               for p in parts(tj.get("pre_tokenizer")))
    return norm or meta


def add_vocab(w, src: Path, n_vocab: int, gguf) -> None:
    from transformers import AutoTokenizer

    tj = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(str(src))
    scores: dict[str, float] = {}
    for rank, merge in enumerate(tj["model"].get("merges") or []):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(a + b, -float(rank))
    lowest = -float(len(scores) + 1)
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    T = gguf.TokenType

    def entry(i: int, t) -> tuple:
        if t is None:
            return f"[PAD{i}]", T.UNUSED, -1000.0
        if i == tok.unk_token_id:
            return t, T.UNKNOWN, 0.0
        if i in added:
            return t, (T.CONTROL if added[i].special else T.USER_DEFINED), -1000.0
        if _BYTE.fullmatch(t):
            return t, T.BYTE, 0.0
        return t, T.NORMAL, scores.get(t, lowest - i)

    tokens, kinds, points = zip(*(entry(i, reverse.get(i)) for i in range(max(n_vocab, len(reverse)))))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(list(tokens))
    w.add_token_scores(list(points))
    w.add_token_types(list(kinds))
    w.add_add_space_prefix(_space_prefix(tj))
    special = gguf.SpecialVocab(src, load_merges=False, n_vocab=len(tokens))
    probe = tok("a")["input_ids"]   # what the tokenizer itself adds around text
    special.add_special_token["bos"] = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
    special.add_special_token["eos"] = tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id]
    if tok.chat_template and not special.chat_template:
        special.chat_template = tok.chat_template
    special.add_to_gguf(w)
