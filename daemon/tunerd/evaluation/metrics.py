"""Generation metrics: ROUGE-1/2/L/Lsum (rouge-score), BLEU (sacrebleu) and exact match, with a
tokenizer that keeps every script.

rouge-score's default tokenizer lowercases and keeps only [a-z0-9], so Korean, Japanese, Chinese,
Cyrillic... text scores 0. Ours keeps letters and digits of every script (Unicode `\\w`):
    whitespace   words: NFKC, lowercased, punctuation removed ("나는 학교에 간다" -> 3 tokens)
    char         one token per letter/digit: the usual choice for Korean/Chinese/Japanese
                 summarisation when no morpheme analyser is installed
    morpheme     Korean morphemes with kiwipiepy (`pip install 'mactuner[korean]'`); particles
                 and endings become their own tokens ("학교에" -> "학교", "에")
The same tokens feed ROUGE and BLEU (sacrebleu with tokenize="none" on the space-joined tokens),
so the two agree on what a token is. ROUGE values are F1 in [0, 1]; BLEU is sacrebleu's 0-100.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

TOKENIZERS = ("whitespace", "char", "morpheme")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_WORD = re.compile(r"\w+", re.UNICODE)


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _words(text: str) -> list[str]:
    return _WORD.findall(_normalise(text).replace("_", " "))


@lru_cache(maxsize=1)
def _kiwi():
    try:
        from kiwipiepy import Kiwi
    except ImportError as e:
        raise ValueError("tokenizer 'morpheme' needs kiwipiepy: pip install 'mactuner[korean]' "
                         f"(or use tokenizer 'char' or 'whitespace') ({e})") from None
    return Kiwi()


def tokenize(text: str, kind: str = "whitespace") -> list[str]:
    if kind == "whitespace":
        return _words(text)
    if kind == "char":
        return [c for w in _words(text) for c in w]
    if kind == "morpheme":
        forms = (t.form for t in _kiwi().tokenize(unicodedata.normalize("NFKC", text)))
        return [f.lower() for f in forms if _WORD.search(f)]
    raise ValueError(f"tokenizer: {kind!r} is not one of {', '.join(TOKENIZERS)}")


class _RougeTokenizer:
    """The object rouge-score calls (`tokenize(text) -> list[str]`)."""

    def __init__(self, kind: str):
        self.kind = kind

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.kind)


def _rouge(kind: str):
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_RougeTokenizer(kind))


def _bleu_text(text: str, kind: str) -> str:
    return " ".join(tokenize(text, kind))


def exact_match(prediction: str, reference: str) -> float:
    return float(" ".join(prediction.split()) == " ".join(reference.split()))


@dataclass
class Scores:
    """Corpus scores (`metrics`: rouge1/2/L/Lsum mean F1, bleu, exact_match) and one dict per row."""
    metrics: dict
    rows: list = field(default_factory=list)
    tokenizer: str = "whitespace"


def score(predictions: list[str], references: list[str], tokenizer: str = "whitespace") -> Scores:
    """ROUGE (mean of per-row F1, as rouge-score's aggregators report), corpus BLEU and exact match."""
    if len(predictions) != len(references):
        raise ValueError(f"predictions: {len(predictions)} rows but references: {len(references)}; "
                         "they must pair up row by row")
    if not predictions:
        raise ValueError("predictions: no rows to score")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer: {tokenizer!r} is not one of {', '.join(TOKENIZERS)}")
    import sacrebleu

    rouge = _rouge(tokenizer)
    rows = []
    for p, r in zip(predictions, references):
        s = rouge.score(r, p)  # (target, prediction)
        row = {k: s[k].fmeasure for k in ROUGE_TYPES}
        row["bleu"] = sacrebleu.sentence_bleu(_bleu_text(p, tokenizer), [_bleu_text(r, tokenizer)],
                                              tokenize="none", use_effective_order=True).score
        row["exact_match"] = exact_match(p, r)
        rows.append(row)
    n = len(rows)
    metrics = {k: sum(row[k] for row in rows) / n for k in (*ROUGE_TYPES, "exact_match")}
    metrics["bleu"] = sacrebleu.corpus_bleu([_bleu_text(p, tokenizer) for p in predictions],
                                            [[_bleu_text(r, tokenizer) for r in references]],
                                            tokenize="none").score
    return Scores(metrics, rows, tokenizer)
