"""Build tiny models and synthetic instruction data, fully offline.

Used by `tunerctl demo` and by the tests: random weights, a byte-level BPE
tokenizer trained on the fly on the data it will see, and a ChatML chat template.
The result is an ordinary Hugging Face model directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) that both mlx-lm and
transformers load. `TinyModelSpec.family` picks the architecture (FAMILY_CLASSES: Llama by
default; tests/test_families.py trains each on both backends).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_NAMES = ["Zorblax", "Quenta", "Miravel", "Oskan", "Telluvar", "Brisko", "Fenmoor", "Kaluth",
          "Drovia", "Ystrel", "Palomir", "Vennic", "Harrowgate", "Ulmara", "Sebrin", "Torvik"]
_THINGS = ["capital", "river", "mountain", "festival", "poet", "dish", "color", "animal"]
_VALUES = ["Amberlin", "Coralis", "Duskmere", "Emberfall", "Frostwick", "Glimmer", "Hollowell",
           "Ivorin", "Jadeport", "Kestrel", "Lumora", "Marrowind", "Nettlebay", "Opaline",
           "Pinecrest", "Quillon", "Rosewater", "Saltmarsh", "Thistledown", "Umberlight"]


@dataclass
class TinyModelSpec:
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 512
    max_position_embeddings: int = 512
    # 1/sqrt(hidden): with HF's default 0.02 the frozen lm_head of a tiny model caps the logits at
    # about +-1.3 (the final RMSNorm fixes the hidden state's scale), so no adapter could push
    # the loss much below ln(vocab).
    initializer_range: float = 0.125
    seed: int = 0
    # Real-shape options (bench/bench_scale.py): a model vocabulary larger than the tokenizer's (the
    # extra rows are never fed but the LM head computes them, as in a real 128k-vocab model), tied
    # embeddings, rope settings, and the dtype the weights are saved in ("bfloat16" like real
    # checkpoints). `rope_scaling` is written top-level in config.json next to `rope_theta`, the
    # way real Llama 3.x checkpoints have it (mlx-lm 0.32's llama reads only those keys, not
    # transformers 5's `rope_parameters`).
    model_vocab_size: int | None = None
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    torch_dtype: str = "float32"
    family: str = "llama"   # a model_type of FAMILY_CLASSES


# model_type -> the transformers config and model classes of that family (backends/families.py FAMILIES)
FAMILY_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
}
TIED = {"gemma2", "gemma3_text", "gpt2"}   # always tied: mlx-lm's models of these families have no lm_head


def _family_kwargs(spec: TinyModelSpec) -> dict:
    """The config arguments of `spec.family` at the tiny sizes (each family names them its own way)."""
    s = spec
    head_dim = s.hidden_size // s.num_attention_heads
    if s.family == "gpt2":
        # no n_inner: mlx-lm's GPT-2 MLP is always 4 x n_embd wide, as in every released GPT-2
        return dict(n_embd=s.hidden_size, n_layer=s.num_hidden_layers, n_head=s.num_attention_heads,
                    n_positions=s.max_position_embeddings,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    kw = dict(hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
              num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
              num_key_value_heads=s.num_key_value_heads, max_position_embeddings=s.max_position_embeddings,
              rms_norm_eps=1e-5)
    if s.family in ("qwen3", "gemma2", "gemma3_text"):
        kw["head_dim"] = head_dim
    if s.family in ("gemma2", "gemma3_text"):   # sliding-window layers as in the real ones (mlx-lm's gemma2 has
        kw.update(query_pre_attn_scalar=head_dim, sliding_window=128)   # no window: the test rows are shorter)
    if s.family == "gemma3_text":   # the real 5 sliding : 1 global pattern, scaled down
        kw["layer_types"] = ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention"
                             for i in range(s.num_hidden_layers)]
    if s.family == "phi3":
        kw["original_max_position_embeddings"] = s.max_position_embeddings
    return kw


def _questions(n: int, seed: int) -> list[tuple[str, str, str]]:
    """`n` made-up (name, thing, value) triples: "What is the THING of NAME?" and its answer's value."""
    rng = random.Random(seed)
    pairs = [(name, thing) for name in _NAMES for thing in _THINGS]
    rng.shuffle(pairs)
    return [(name, thing, rng.choice(_VALUES)) for name, thing in pairs[:n]]


def synthetic_facts(n: int = 32, seed: int = 0) -> list[dict]:
    """Question/answer pairs about made-up places: `{"prompt", "completion"}` rows.

    A random model cannot know them; a fine-tuned one can recite them exactly.
    """
    return [{"prompt": f"What is the {thing} of {name}?", "completion": f"The {thing} of {name} is {value}."}
            for name, thing, value in _questions(n, seed)]


def synthetic_preferences(n: int = 64, seed: int = 1) -> list[dict]:
    """Preference pairs about the made-up places, `{"prompt", "chosen", "rejected"}` (task dpo /
    orpo): the chosen answer is a whole sentence, the rejected one the bare value -- a style the
    model can learn to prefer on questions it never saw."""
    return [{"prompt": f"What is the {thing} of {name}?", "chosen": f"The {thing} of {name} is {value}.",
             "rejected": f"{value}."} for name, thing, value in _questions(n, seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token=None,
                                   additional_special_tokens=["<|im_start|>", "<|endoftext|>"])


def build_tiny_model(out_dir: str | Path, corpus: list[str] | None = None,
                     spec: TinyModelSpec | None = None) -> Path:
    """Write a random-weight model of `spec.family` + BPE tokenizer + chat template to `out_dir`."""
    import torch
    import transformers

    spec = spec or TinyModelSpec()
    if spec.family not in FAMILY_CLASSES:
        raise ValueError(f"family: {spec.family!r} is not one of {', '.join(FAMILY_CLASSES)}")
    config_cls, model_cls = (getattr(transformers, n) for n in FAMILY_CLASSES[spec.family])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        corpus = [r["prompt"] + " " + r["completion"] for r in synthetic_facts(len(_NAMES) * len(_THINGS))]
    corpus = corpus + ["user assistant system\n"] * 4
    tokenizer = _train_tokenizer(corpus, spec.vocab_size)
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(spec.seed)
    vocab = max(len(tokenizer), spec.model_vocab_size or 0)
    rope = {"rope_theta": spec.rope_theta} if spec.rope_scaling is None else \
        {"rope_theta": spec.rope_theta, "rope_scaling": dict(spec.rope_scaling)}
    config = config_cls(
        vocab_size=vocab, initializer_range=spec.initializer_range,
        tie_word_embeddings=spec.tie_word_embeddings or spec.family in TIED, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, torch_dtype=spec.torch_dtype,
        **_family_kwargs(spec), **({} if spec.family == "gpt2" else rope),
    )
    model = model_cls(config).to(getattr(torch, spec.torch_dtype))
    model.save_pretrained(out, safe_serialization=True)
    if spec.rope_theta != 10000.0 or spec.rope_scaling is not None or spec.torch_dtype != "float32":
        cfg_path = out / "config.json"  # also the keys real checkpoints (and older readers) use
        saved = json.loads(cfg_path.read_text())
        saved.update(rope_theta=spec.rope_theta, torch_dtype=spec.torch_dtype)
        if spec.rope_scaling is not None:
            saved["rope_scaling"] = dict(spec.rope_scaling)
        cfg_path.write_text(json.dumps(saved, indent=2) + "\n")
    return out


def build_demo(home: str | Path, n_facts: int = 32, seed: int = 0) -> dict:
    """The demo bundle under `home`: a tiny model, train/valid data. Returns their paths."""
    home = Path(home)
    rows = synthetic_facts(n_facts, seed)
    model_dir = home / "model"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    train = write_jsonl(home / "data" / "train.jsonl", rows)
    valid = write_jsonl(home / "data" / "valid.jsonl", rows[: max(4, n_facts // 4)])
    prefs = synthetic_preferences(64, seed + 1)   # task dpo / orpo: 48 pairs to train on, 16 held out
    pref_train = write_jsonl(home / "data" / "preference_train.jsonl", prefs[:48])
    pref_valid = write_jsonl(home / "data" / "preference_valid.jsonl", prefs[48:])
    return {"model": str(model_dir), "train": str(train), "valid": str(valid), "rows": rows,
            "preference_train": str(pref_train), "preference_valid": str(pref_valid), "preference_rows": prefs}


# The demo's training config; configs/examples/demo.yaml is the same with placeholder paths
# (tests/test_configs.py keeps the two in step).
DEMO_CONFIG = """\
# The built-in demo: a tiny random Llama learns 32 made-up facts.
# `tunerctl demo` writes this file next to the model and data it builds.
model: {model}
backend: auto
peft_adapter: lora
lora_r: 16
lora_alpha: 32
lora_target_modules: all-linear   # a random base needs capacity everywhere to memorise facts
learning_rate: 0.003              # high: tiny model, tiny data
lr_scheduler_type: cosine
warmup_steps: 10
max_steps: 240
per_device_train_batch_size: 8
max_seq_length: 128
logging_steps: 10
eval_strategy: steps
eval_steps: 60
save_steps: 60
save_total_limit: 2
seed: 0
data:
  train: {train}
  validation: {valid}
"""


def demo_config_yaml(model: str, train: str, valid: str) -> str:
    return DEMO_CONFIG.format(model=model, train=train, valid=valid)
