"""GGUF out for Gemma 2 and Gemma 3 (text), issue 19: export/gguf.py + export/gguf_gemma.py write a
tiny random Gemma with a SentencePiece-style tokenizer (a GemmaTokenizer: BPE over characters with
byte fallback, as the real ones ship in tokenizer.json) so that llama.cpp's reader (`gguf`) sees
the vocabulary as its "llama" tokenizer model and the Gemma keys, and the product's own GGUF-in
(models/gguf.dequantised, transformers' loader) turns it back into the same model: logits within
f16 rounding, the same greedy tokens, the same tokenization. The prompt is longer than the sliding
window, so the sliding and global layers both count; the norm weights are random, so the RMSNorm
+1 is checked too. head_dim and query_pre_attn_scalar are 256 (the real ones' and the config
defaults transformers' loader assumes; llama.cpp scales attention by the head size).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunerd.export.gguf import GGUFError, write_gguf

GEMMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
                  "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
                  "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
TEXT = "What is the capital of Zorblax?  It is\nAmberlin, é."


def gemma_tokenizer(out: Path):
    """A GemmaTokenizer trained on the demo facts: Gemma's special tokens first, the 256 byte
    tokens, then pieces; the merges are every split of each piece, best (lowest id) first, as
    transformers builds them from a SentencePiece model."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    from tunerd.demo.tiny import synthetic_facts

    corpus = [r["prompt"] + " " + r["completion"] for r in synthetic_facts(128)] + ["user model\n"] * 4
    t = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    t.normalizer = normalizers.Replace(" ", "\u2581")
    t.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, max_token_length=6, show_progress=False,
        special_tokens=SPECIAL + [f"<0x{i:02X}>" for i in range(256)]))
    vocab = t.get_vocab()
    tok = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab, {k: -i for k, i in vocab.items()}),
                         add_bos_token=True, extra_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    tok.chat_template = GEMMA_TEMPLATE
    tok.save_pretrained(out)
    return tok


def build_gemma(out: Path, family: str, **config) -> Path:
    import transformers

    tok = gemma_tokenizer(out)
    names = {"gemma2": ("Gemma2Config", "Gemma2ForCausalLM"), "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM")}
    config_cls, model_cls = (getattr(transformers, n) for n in names[family])
    cfg = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2 if family == "gemma2" else 6, num_attention_heads=2, num_key_value_heads=1,
                     head_dim=256, initializer_range=0.125, max_position_embeddings=512, sliding_window=16,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                     **config)
    torch.manual_seed(0)
    model = model_cls(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gemmas(tmp_path_factory):
    return {fam: build_gemma(tmp_path_factory.mktemp(fam), fam) for fam in ("gemma2", "gemma3_text")}


def read(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    return ({k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")},
            {t.name: t for t in r.tensors})


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_gemma_reads_back_with_its_vocab_and_keys_and_generates_the_same(gemmas, tmp_path, family):
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunerd.models.gguf import dequantised

    folder = gemmas[family]
    config = json.loads((folder / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(folder))
    out = write_gguf(folder, tmp_path / f"{family}.gguf", "f16")
    fields, tensors = read(out)
    arch = {"gemma2": "gemma2", "gemma3_text": "gemma3"}[family]
    assert fields["general.architecture"] == arch
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_space_prefix"] is False
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(fields["tokenizer.ggml.scores"]) == config["vocab_size"] == fields[f"{arch}.vocab_size"]
    assert tokens == [tok.convert_ids_to_tokens(i) for i in range(len(tokens))]
    T = gguf.TokenType
    assert types[tok.convert_tokens_to_ids("<0x41>")] == T.BYTE and types[tok.unk_token_id] == T.UNKNOWN
    assert types[tok.convert_tokens_to_ids("<end_of_turn>")] == T.CONTROL
    assert {types[i] for i in tok("Zorblax capital")["input_ids"][1:]} == {T.NORMAL}
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (tok.bos_token_id, tok.eos_token_id)
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.chat_template"] == GEMMA_TEMPLATE
    assert fields[f"{arch}.attention.sliding_window"] == 16 and fields[f"{arch}.attention.key_length"] == 256
    if family == "gemma2":
        assert (fields["gemma2.attn_logit_softcapping"], fields["gemma2.final_logit_softcapping"]) == (50.0, 30.0)
    else:
        assert (fields["gemma3.rope.freq_base"], fields["gemma3.rope.freq_base_swa"]) == (1e6, 1e4)
        assert list(tensors["blk.5.attn_q_norm.weight"].shape) == [256]
    assert "output.weight" not in tensors and list(tensors["token_embd.weight"].shape) == [64, config["vocab_size"]]
    assert tensors["blk.1.post_ffw_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    hf = load_file(str(folder / "model.safetensors"))
    torch.testing.assert_close(torch.from_numpy(tensors["blk.1.post_ffw_norm.weight"].data.copy()),
                               hf["model.layers.1.post_feedforward_layernorm.weight"] + 1)   # llama.cpp's x * w

    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    back, back_tok = dequantised(out, "float32")
    assert back_tok(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    ids = tok.apply_chat_template([{"role": "user", "content": TEXT * 2}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert ids.shape[1] > 2 * 16   # past the sliding window
    with torch.no_grad():
        a, b = ref(ids).logits, back.eval()(ids).logits
        assert (a - b).abs().max().item() < 3e-2   # f16 rounding; the logits span about +-5
        greedy = [m.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, ids.shape[1]:].tolist()
                  for m in (ref, back)]
    assert greedy[0] == greedy[1]


def test_a_gemma_llama_cpp_would_run_differently_is_refused(tmp_path):
    """llama.cpp fixes the layer pattern and the attention scale; other values are a clear error."""
    folder = build_gemma(tmp_path / "g3", "gemma3_text", layer_types=["sliding_attention", "full_attention"] * 3)
    with pytest.raises(GGUFError, match="every 6th layer global"):
        write_gguf(folder, tmp_path / "g3.gguf")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(layer_types=None, query_pre_attn_scalar=64)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GGUFError, match=r"query_pre_attn_scalar 64: .*1/sqrt\(head_dim = 256\)"):
        write_gguf(folder, tmp_path / "g3.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_a_sentencepiece_tokenizer_elsewhere_is_a_clear_error(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    gemma_tokenizer(folder)
    with pytest.raises(GGUFError, match="SentencePiece-style tokenizer .* Gemma 2/3 only"):
        write_gguf(folder, tmp_path / "t.gguf")
