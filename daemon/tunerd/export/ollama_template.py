"""A tokenizer's Jinja chat template as an Ollama `TEMPLATE` (Go text/template syntax).

    ollama_template(tokenizer) -> OllamaTemplate(family, template, stops, default_system, bos)
    UnknownTemplate: a chat template none of FAMILIES renders the same as

Jinja is not translated construct by construct: the tokenizer's own template is rendered
(`apply_chat_template`) for a few probe conversations, and a family whose known layout renders the
same text for every probe is taken; its Go template is the one Ollama runs. Recognised: ChatML
(SmolLM2, Qwen2, the tiny demo models; a default system prompt such as SmolLM2's becomes the
Modelfile's SYSTEM, which Ollama inserts when a chat has no system message), Llama 3 (3.0's layout)
and Gemma 2/3 (a system message goes at the start of the first user turn, as Gemma 3's template
puts it). Llama 3.1+'s dated system header, Qwen3's thinking blocks and the rest are UnknownTemplate.

The Go templates follow Ollama's own conventions: they range over `.Messages` (Ollama puts the
Modelfile's SYSTEM first when a request has no system message), the generation prompt follows a
last message that is not the assistant's, and a last assistant message is left open (a prefill).
They never print the BOS token: llama.cpp adds it when the GGUF says so (`bos` here), as it does
for Llama 3 and Gemma. tests/test_ollama_export.py renders them with a small Go-template
interpreter and compares with the tokenizer's own output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CHATML_GO = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

LLAMA3_GO = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""

GEMMA_GO = """\
{{- $system := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}
{{- $system = .Content }}
{{- else if eq .Role "user" -}}
<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" -}}
<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


class UnknownTemplate(ValueError):
    """A chat template that none of the recognised families renders the same as."""


@dataclass
class OllamaTemplate:
    family: str                 # chatml | llama3 | gemma
    template: str               # the Go template for the Modelfile's TEMPLATE
    stops: list = field(default_factory=list)   # end-of-turn tokens, for PARAMETER stop
    default_system: str = ""    # the system prompt the chat template adds to a chat without one
    bos: str = ""               # the BOS text the chat template starts with (llama.cpp adds it)


# -- the families: what their layout renders, in Python, for a chat that ends with a user turn ------
def _chatml(msgs, bos, default_system):
    if bos:
        return None
    if default_system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": default_system}] + msgs
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + "<|im_start|>assistant\n"


def _llama3(msgs, bos, default_system):
    return bos + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                         for m in msgs) + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _gemma(msgs, bos, default_system):
    system = ""
    if msgs[0]["role"] == "system":
        system, msgs = msgs[0]["content"] + "\n\n", msgs[1:]
    out = []
    for i, m in enumerate(msgs):
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"<start_of_turn>{role}\n{system if i == 0 else ''}{m['content']}<end_of_turn>\n")
    return bos + "".join(out) + "<start_of_turn>model\n"


FAMILIES = {   # name -> (Python layout, Go template, end-of-turn token)
    "chatml": (_chatml, CHATML_GO, "<|im_end|>"),
    "llama3": (_llama3, LLAMA3_GO, "<|eot_id|>"),
    "gemma": (_gemma, GEMMA_GO, "<end_of_turn>"),
}

_U1, _A1, _U2, _S = "Hello there, who are you?", "I am a model. Ask away.", "What is 2 + 2?", "Answer briefly."
PROBES = [
    [{"role": "user", "content": _U1}],
    [{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}],
    [{"role": "system", "content": _S}, {"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
     {"role": "user", "content": _U2}],
]


def _render(tokenizer, msgs):
    """The tokenizer's own text for `msgs` + the generation prompt, or None where its template
    refuses them (Gemma 2 raises on a system message)."""
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception:   # jinja2's TemplateError, raise_exception(...) in the template
        return None


def _default_system(text: str) -> str:
    """SmolLM2's and Qwen2.5's kind: a ChatML system turn the template adds to a chat without one."""
    head = "<|im_start|>system\n"
    return text[len(head):text.index("<|im_end|>")] if text.startswith(head) and "<|im_end|>" in text else ""


def ollama_template(tokenizer) -> OllamaTemplate:
    """The family of `tokenizer.chat_template` (the first of FAMILIES that renders every probe
    conversation exactly as the tokenizer does) and its Go template; UnknownTemplate if none does."""
    if not getattr(tokenizer, "chat_template", None):
        raise UnknownTemplate("the tokenizer has no chat template")
    rendered = [(p, _render(tokenizer, p)) for p in PROBES]
    if rendered[0][1] is None or rendered[1][1] is None:
        raise UnknownTemplate("the chat template does not render a plain user/assistant chat")
    default_system = _default_system(rendered[0][1])
    boses = [""] + ([tokenizer.bos_token] if tokenizer.bos_token else [])
    for name, (layout, go, eot) in FAMILIES.items():
        for bos in boses:
            if all(text is None or layout(p, bos, default_system) == text for p, text in rendered):
                return OllamaTemplate(name, go, [eot], default_system, bos)
    raise UnknownTemplate(f"the chat template is not one of the recognised layouts ({', '.join(FAMILIES)}); "
                          f"it begins {tokenizer.chat_template[:80]!r}")
