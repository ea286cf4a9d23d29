"""Chat templates: the tokenizer's own, or a built-in one for tokenizers without a template.

`setup_template(tokenizer, name)` resolves `data.template` to a Jinja template, adds the special
tokens that template needs but the tokenizer lacks (the backend then resizes the embeddings and
saves them with the adapter), and returns a `ChatTemplate`. With `auto`, a tokenizer's own
template wins; without one, Llama 3 when its header tokens are in the vocabulary, ChatML when
`<|im_start|>` is, else Alpaca (which needs no new tokens, only an EOS).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
ALPACA = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}"
    "{% else %}{{ '" + ALPACA_SYSTEM + "\n\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)
BUILTIN = {
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|eot_id|>"),
    "alpaca": (ALPACA, [], None),  # ends a response with the tokenizer's EOS
}
ALIASES = {"qwen": "chatml"}
TEMPLATE_NAMES = ("auto", "chatml", "qwen", "llama3", "alpaca")


@dataclass
class ChatTemplate:
    name: str              # "tokenizer" (its own) | chatml | llama3 | alpaca
    template: str          # the Jinja source used to render rows (save it with the adapter)
    end_of_turn: str       # the token that ends an assistant turn; supervised, and a stop token
    added_tokens: list     # special tokens added to the tokenizer (embeddings must be resized)


def _in_vocab(tokenizer, token: str) -> bool:
    return token in tokenizer.get_vocab()


def resolve_name(tokenizer, name: str = "auto") -> str:
    """The template `name` resolves to for this tokenizer (see module docstring)."""
    name = ALIASES.get(name or "auto", name or "auto")
    if name == "tokenizer":
        return name
    if name not in BUILTIN and name != "auto":
        raise DataError(f"data.template: {name!r} is not one of {', '.join(TEMPLATE_NAMES)}")
    if name != "auto":
        return name
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer"
    if _in_vocab(tokenizer, "<|start_header_id|>") and _in_vocab(tokenizer, "<|eot_id|>"):
        return "llama3"
    if _in_vocab(tokenizer, "<|im_start|>") and _in_vocab(tokenizer, "<|im_end|>"):
        return "chatml"
    return "alpaca"


def missing_tokens(tokenizer, name: str) -> list[str]:
    """Special tokens the resolved template `name` needs that the tokenizer does not have as such."""
    if name == "tokenizer":
        return []
    _, needed, _ = BUILTIN[name]
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    out = [t for t in needed if t not in special]
    if tokenizer.eos_token is None:
        out.append("<|endoftext|>")
    return out


def add_chat_tokens(tokenizer, name: str) -> int:
    """Add the special tokens template `name` needs and the tokenizer lacks; return how many
    entered the vocabulary (the model's embeddings must grow by that many rows)."""
    name = resolve_name(tokenizer, name)
    todo = missing_tokens(tokenizer, name)
    if not todo:
        return 0
    before = len(tokenizer)
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
        todo = [t for t in todo if t != "<|endoftext|>"]
    if todo:
        tokenizer.add_tokens(todo, special_tokens=True)
    return len(tokenizer) - before


def _end_of_turn(tokenizer, template: str):
    """The special token a template writes right after an assistant message, if any."""
    mark = "Zq7MARKq7Z"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": mark}],
            chat_template=template, tokenize=False)
    except Exception:
        return None
    if mark not in text:
        return None
    rest = text[text.rindex(mark) + len(mark):]
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    hits = [t for t in specials if t and rest.startswith(t)]
    return max(hits, key=len) if hits else None


def setup_template(tokenizer, name: str = "auto", *, install: bool = True) -> ChatTemplate:
    """Resolve `data.template`, add missing chat special tokens, and (with `install`, when the
    tokenizer had no template) set it as the tokenizer's chat template so chat uses it too."""
    resolved = resolve_name(tokenizer, name)
    before = set(tokenizer.get_vocab())
    add_chat_tokens(tokenizer, resolved)
    added = [t for t in tokenizer.get_vocab() if t not in before]
    if resolved == "tokenizer":
        template, eot = tokenizer.chat_template, tokenizer.eos_token
        if isinstance(template, dict):  # several named templates: train with the default one
            template = template.get("default") or next(iter(template.values()))
        eot = _end_of_turn(tokenizer, template) or eot
    else:
        template, _, eot = BUILTIN[resolved]
        eot = eot or tokenizer.eos_token
        if install and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = template
    return ChatTemplate(resolved, template, eot, added)


def render(tokenizer, template: ChatTemplate, messages: list[dict], add_generation_prompt: bool = False,
           tools=None) -> str:
    """Render messages to text with the chosen template (no tokenization); `tools` (function
    schemas) is passed to the template as `tools=`, as TRL does."""
    return tokenizer.apply_chat_template(messages, chat_template=template.template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, tools=tools or None)
