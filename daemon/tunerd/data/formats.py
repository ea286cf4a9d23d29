"""Row formats: detect (or take the declared) format, map columns, and turn each row into an
`Example` — either plain text or a list of chat messages.

    text             {"text": ...}                                     -> Example(text=...)
    prompt_response  {"prompt", "completion" | "response", "system"?}  -> system?, user, assistant
    alpaca           {"instruction", "input"?, "output", "system"?}     -> system?, user, assistant
    messages         {"messages": [{"role", "content"}, ...], "tools"?}  -> the messages (multi-turn)

Column mapping (`text_column`, `prompt_column`, `response_column`, `system_column`,
`messages_column`) overrides the default names. ShareGPT-style `conversations` with
`from`/`value` keys are accepted as messages, their `function_call` and `observation` turns
(LLaMA-Factory's tool calling) as an assistant turn's `tool_calls` and a `tool` turn. Tool-calling
rows (OpenAI format: an assistant turn with `tool_calls` and maybe no content, `tool` turns with
the results, a `tools` column of function schemas) are messages too; data/tools.py normalises
them and checks the template rendered them.

`data.system_prompt` is a constant system prompt for a whole data set: every chat row without
a system turn of its own (an empty or absent system column, no system message) starts with it.
A row's own system prompt wins. Plain text rows have no turns, so there it is an error.

A column the format needs but a row lacks altogether (rows from another file with other
columns) is an error naming the row and the columns it has; a present but empty one is "empty".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..config.schema import DataConfig
from .errors import DataError
from .sources import Record
from .tools import SHAREGPT_ROLES, function_call, tool_calls, tool_result, tools_column

FORMATS = ("text", "prompt_response", "alpaca", "messages", "preference")   # preference: data/preference.py
PROMPT_NAMES = ("prompt", "question", "query", "input")
RESPONSE_NAMES = ("completion", "response", "answer", "output")
MESSAGES_NAMES = ("messages", "conversations", "conversation")
TOOLS_NAME = "tools"  # the column of function schemas a messages row may have
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "model": "assistant", "bot": "assistant", "system": "system", "tool": "tool", **SHAREGPT_ROLES}


@dataclass
class Example:
    origin: str
    text: Optional[str] = None                      # format text
    messages: list = field(default_factory=list)    # chat formats
    tools: Optional[list] = None                    # function schemas, passed to the template as tools=
    first_supervised: int = 0                       # assistant turns before this message are context only
                                                    # (a preference pair's history: data/preference.py)

    @property
    def is_text(self) -> bool:
        return self.text is not None


@dataclass
class FormatSpec:
    format: str
    columns: dict  # role -> column name: text | prompt | response | system | input | messages | tools
    system_prompt: Optional[str] = None  # data.system_prompt, for rows without their own

    @property
    def required(self) -> list[str]:
        """The columns every row must have (the system, alpaca input and tools columns are optional)."""
        return [c for role, c in self.columns.items() if c and role not in ("system", "input", "tools")]


def _where(source: str) -> str:
    return f"{source}: " if source else ""


def _need(col: str, key: str, columns: list[str], source: str) -> str:
    if col not in columns:
        raise DataError(f"{_where(source)}{key} {col!r} not found; the columns are: {', '.join(columns)}")
    return col


def _first(names, columns) -> Optional[str]:
    return next((n for n in names if n in columns), None)


def detect_format(columns: list[str], cfg: DataConfig, source: str = "") -> FormatSpec:
    """The format and column mapping for rows with these columns (declared, mapped or detected)."""
    columns = list(columns)
    if cfg.text_column and cfg.prompt_column:
        raise DataError("data.text_column and data.prompt_column: declare one or the other, not both")
    fmt = cfg.format or "auto"
    if fmt not in FORMATS + ("auto",):
        raise DataError(f"data.format: {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    system = cfg.system_column or _first(("system",), columns)
    if cfg.system_column:
        _need(cfg.system_column, "data.system_column", columns, source)
    if fmt == "preference" or fmt == "auto" and is_preference(columns, cfg):
        return preference_spec(columns, cfg, system, source)
    if fmt == "auto":
        if cfg.messages_column:
            fmt = "messages"
        elif cfg.text_column:
            fmt = "text"
        elif cfg.prompt_column or cfg.response_column:
            fmt = "alpaca" if "instruction" == cfg.prompt_column else "prompt_response"
        elif _first(MESSAGES_NAMES, columns):
            fmt = "messages"
        elif "instruction" in columns and "output" in columns:
            fmt = "alpaca"
        elif _first(PROMPT_NAMES, columns) and _first(RESPONSE_NAMES, columns):
            fmt = "prompt_response"
        elif "text" in columns:
            fmt = "text"
        else:
            raise DataError(
                f"{_where(source)}cannot detect the data format from the columns: {', '.join(columns)}. "
                "Expected text, prompt+completion (or response), instruction+output (alpaca) or messages; "
                "or map yours with data.text_column / data.prompt_column + data.response_column / "
                "data.messages_column")
    if fmt == "text":
        if cfg.system_prompt:
            raise DataError(f"{_where(source)}data.system_prompt: the rows are plain text (format text), which "
                            "has no turns to put a system prompt in; use a chat format or drop the key")
        col = cfg.text_column or "text"
        return FormatSpec(fmt, {"text": _need(col, "data.text_column" if cfg.text_column else "text column",
                                              columns, source)})
    if fmt == "messages":
        col = cfg.messages_column or _first(MESSAGES_NAMES, columns) or "messages"
        col = _need(col, "data.messages_column" if cfg.messages_column else "messages column", columns, source)
        tools = TOOLS_NAME if TOOLS_NAME in columns else None
        return FormatSpec(fmt, {"messages": col, "tools": tools}, cfg.system_prompt)
    if fmt == "alpaca":
        prompt = _need(cfg.prompt_column or "instruction", "data.prompt_column" if cfg.prompt_column
                       else "instruction column", columns, source)
        response = _need(cfg.response_column or "output", "data.response_column" if cfg.response_column
                         else "output column", columns, source)
        out = {"prompt": prompt, "response": response, "input": "input" if "input" in columns else None}
        return FormatSpec(fmt, {**out, "system": system}, cfg.system_prompt)
    prompt = cfg.prompt_column or _first(PROMPT_NAMES, columns) or "prompt"
    response = cfg.response_column or _first(RESPONSE_NAMES, columns) or "completion"
    _need(prompt, "data.prompt_column" if cfg.prompt_column else "prompt column", columns, source)
    _need(response, "data.response_column" if cfg.response_column else
          "response column (completion or response)", columns, source)
    return FormatSpec("prompt_response", {"prompt": prompt, "response": response, "system": system},
                      cfg.system_prompt)


def _str(value, origin: str, col: str, *, required: bool) -> str:
    if value is None:
        value = ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f"{origin}: field {col!r} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(f"{origin}: field {col!r} is empty")
    return value


def _messages(value, origin: str, col: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{origin}: field {col!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(f"{origin}: {col}[{i}] must be an object with role and content")
        given = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if given not in _ROLES:
            raise DataError(f"{origin}: {col}[{i}].role {given!r} is not one of system, user, assistant, tool")
        role = _ROLES[given]
        calls = tool_calls(m["tool_calls"], origin, f"{col}[{i}].tool_calls") \
            if role == "assistant" and m.get("tool_calls") else []
        if given == "function_call":   # ShareGPT: the value is the call
            calls = function_call(content, origin, f"{col}[{i}].{'value' if 'value' in m else 'content'}")
            content = ""
        if role == "tool":
            msg = {"role": role, "content": tool_result(content, origin, f"{col}[{i}].content")}
            msg.update({k: str(m[k]) for k in ("tool_call_id", "name") if m.get(k) is not None})
        else:  # an assistant turn that calls tools needs no text of its own
            msg = {"role": role, "content": _str(content, origin, f"{col}[{i}].content",
                                                 required=(role == "assistant" and not calls))}
            if calls:
                msg["tool_calls"] = calls
        out.append(msg)
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{origin}: field {col!r} has no assistant message to learn from")
    return out


def to_example(record: Record, spec: FormatSpec) -> Example:
    if spec.format == "preference":
        raise DataError(f"{record.origin}: a preference row (chosen / rejected) is a pair; "
                        "data/preference.py reads it (task dpo or orpo)")
    return _to_example(record, spec)


def _to_example(record: Record, spec: FormatSpec) -> Example:
    """One row as an Example; missing columns, empty responses and wrong types are errors naming
    row and field."""
    row, origin, c = record.data, record.origin, spec.columns
    missing = [col for col in spec.required if col not in row]
    if missing:
        raise DataError(f"{origin}: no column {', '.join(map(repr, missing))} ({spec.format} format); this row's "
                        f"columns are: {', '.join(row) or 'none'}")
    if spec.format == "text":
        return Example(origin, text=_str(row.get(c["text"]), origin, c["text"], required=True))
    if spec.format == "messages":
        msgs = _messages(row.get(c["messages"]), origin, c["messages"])
        if spec.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": spec.system_prompt})
        tools = tools_column(row.get(c["tools"]), origin, c["tools"]) if c.get("tools") else None
        return Example(origin, messages=msgs, tools=tools)
    prompt = _str(row.get(c["prompt"]), origin, c["prompt"], required=False)
    if spec.format == "alpaca" and c.get("input"):
        extra = _str(row.get(c["input"]), origin, c["input"], required=False)
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}" if prompt else extra
    response = _str(row.get(c["response"]), origin, c["response"], required=True)
    system = _str(row.get(c["system"]), origin, c["system"], required=False) if c.get("system") else ""
    system = system if system.strip() else spec.system_prompt or ""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return Example(origin, messages=msgs)


def to_examples(records: list[Record], spec: FormatSpec) -> list[Example]:
    return [to_example(r, spec) for r in records]


def columns_of(records: list[Record]) -> list[str]:
    """Column names in first-seen order over the rows (rows of JSON Lines may differ)."""
    seen: dict = {}
    for r in records[:1000]:
        for k in r.data:
            seen.setdefault(k, None)
    return list(seen)


# ---- preference rows (task dpo / orpo; data/preference.py turns them into pairs) ------------------
PROMPT_NAMES = ("prompt", "question", "instruction", "input")


def is_preference(columns: list, cfg: DataConfig) -> bool:
    return bool(cfg.chosen_column or cfg.rejected_column) or ("chosen" in columns and "rejected" in columns)


def preference_spec(columns: list, cfg: DataConfig, system: Optional[str], source: str = "") -> FormatSpec:
    chosen = _need(cfg.chosen_column or "chosen", "data.chosen_column" if cfg.chosen_column else "chosen column",
                   columns, source)
    rejected = _need(cfg.rejected_column or "rejected", "data.rejected_column" if cfg.rejected_column
                     else "rejected column", columns, source)
    prompt = cfg.prompt_column or _first(PROMPT_NAMES, columns)
    if cfg.prompt_column:
        _need(prompt, "data.prompt_column", columns, source)
    return FormatSpec("preference", {"prompt": prompt, "chosen": chosen, "rejected": rejected, "system": system},
                      cfg.system_prompt)
