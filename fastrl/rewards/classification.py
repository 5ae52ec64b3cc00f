"""CLS-RL rewards for classification (DESIGN 3.5).

* ``format_reward``: 1 iff the completion is exactly ``<think>...</think>`` followed by
  ``<answer>...</answer>``, with only whitespace around and between them, one of each
  and no tag inside another.
* ``accuracy_reward``: 1 iff the answer names exactly one class of the label set and it is
  the gold one. The answer is the content of the ``<answer>`` block when the completion
  has answer tags (several blocks, or an unclosed one: 0), else the whole completion
  (the no-thinking variant, where the model may answer bare). Both answer and labels are
  normalised: NFKC and case-folded, ``\\text{}``/``\\mathrm{}``/``\\textbf{}``/``\\mathbf{}``/``\\textit{}``/``\\boxed{}``
  unwrapped, whitespace collapsed, sentence marks, quotes, brackets and markdown emphasis
  (``*``, ``_``, ``~``) stripped from both ends; other punctuation is kept: "-1", "+1" and
  "C++" are no "1" or "C", whatever the label set.
  The normalised answer must then *equal* one normalised label: a label merely
  appearing in the answer is not enough, which is what makes "not cat", "cat or dog",
  "cat, dog" and "it is a cat" score 0 (substring matching is what reward hacks exploit).
* ``reward(..., thinking=True)``: format + accuracy (0, 1 or 2); ``thinking=False``:
  accuracy alone.
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable

_TAG = re.compile(r"</?(?:think|answer)\s*>", re.IGNORECASE)
_FORMAT = re.compile(r"\A\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*\Z", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_TAG = re.compile(r"</?answer\s*>", re.IGNORECASE)  # any spelling _TAG counts, for the ambiguity check
_WRAPPER_OPEN = re.compile(r"\\(?:text|mathrm|textbf|mathbf|textit|boxed)\s*\{")
_STRIP = string.punctuation + string.whitespace
_SENTENCE = set(".,;:!?¿¡\"'`$…。、，！？；：*_~")  # (and markdown's emphasis: **cat**)


def _check_str(name: str, value) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def normalize(text: str) -> str:
    """Unicode-normalised (NFKC) and case-folded, wrappers removed, whitespace collapsed,
    punctuation stripped from both ends."""
    return _trim(_unwrap(text), _stripped)


def _exact(text: str) -> str:
    """As ``normalize``, but only sentence marks, quotes, brackets and emphasis stripped from
    the ends: the signs of "-1" and "C++" kept."""
    return _trim(_unwrap(text), _sentence_mark)


def _unwrap(text: str) -> str:
    _check_str("text", text)
    return " ".join(unicodedata.normalize("NFKC", _without_wrappers(text)).casefold().split())


def _without_wrappers(text: str) -> str:
    """\\text{\\mathrm{cat}} -> cat, in one pass: a wrapper's braces go, other braces stay (a
    regex substitution per nesting level took 11 s for 16,666 levels)."""
    out, closing = [], []  # closing: per open brace, whether it closes a wrapper
    i = 0
    while i < len(text):
        wrapper = _WRAPPER_OPEN.match(text, i)
        if wrapper:
            closing.append(True)
            i = wrapper.end()
            continue
        c = text[i]
        if c == "{":
            closing.append(False)
        if c != "}" or not closing or not closing.pop():
            out.append(c)
        i += 1
    return "".join(out)


def _trim(text: str, stripped) -> str:
    keep = [i for i, c in enumerate(text) if not stripped(c)]
    return text[keep[0]:keep[-1] + 1] if keep else ""


def _stripped(c: str) -> bool:
    """Punctuation (and $) of any script, as the ends of an answer: “cat”, cat。, «cat», cat…"""
    return c in _STRIP or unicodedata.category(c).startswith(("P", "Z"))


def _sentence_mark(c: str) -> bool:
    return c in _SENTENCE or c.isspace() or unicodedata.category(c) in ("Ps", "Pe", "Pi", "Pf", "Zs")


def format_reward(completion: str) -> float:
    _check_str("completion", completion)
    # exactly the four tags, in order, before the regex: counting is linear, while the
    # regex's backtracking over repeated tags is quadratic in the completion's length
    if _TAG.findall(completion) != ["<think>", "</think>", "<answer>", "</answer>"]:
        return 0.0
    return 1.0 if _FORMAT.match(completion) else 0.0


def extract_answer(completion: str) -> str | None:
    """The single ``<answer>`` block's content; the whole completion when it has no
    answer tag; None when the tags are ambiguous (several blocks, unbalanced, or any other
    spelling of the tag beside the block, e.g. ``<ANSWER>``, as format_reward counts them)."""
    _check_str("completion", completion)
    tags = _ANSWER_TAG.findall(completion)
    if not tags:
        return completion
    if tags != ["<answer>", "</answer>"]:  # (before the search: each unclosed tag's scan to the end was quadratic)
        return None
    block = _ANSWER.search(completion)
    return block.group(1) if block else None


def _label_matcher(gold: str, labels: Iterable[str]):
    """(the gold label, answer -> the label it names or None): the label it equals as
    ``_exact`` reads both (a loose reading, all punctuation stripped, took "-1" for the label
    "1" where no "-1" was in the set, and "C" for "C++")."""
    _check_str("gold", gold)
    if isinstance(labels, str):  # "cat" would otherwise be the label set {c, a, t}
        raise TypeError("labels must be a collection of class names, not a single str")
    if not isinstance(labels, Iterable):
        raise TypeError(f"labels must be a collection of class names, got {type(labels).__name__}")
    labels = list(labels)
    if not labels:
        raise ValueError("labels must not be empty")
    exact: dict[str, str] = {}
    for label in labels:
        _check_str("each label", label)
        key = _exact(label)
        if not normalize(label):
            raise ValueError(f"label {label!r} is empty after normalisation")
        if key in exact and exact[key] != label:
            raise ValueError(f"labels {exact[key]!r} and {label!r} are the same after normalisation")
        exact[key] = label

    def match(text: str):
        return exact.get(_exact(text))

    gold_label = match(gold)
    if gold_label is None:
        raise ValueError(f"gold {gold!r} is not in the label set {labels!r}")
    return gold_label, match


def check_labels(gold: str, labels: Iterable[str]) -> None:
    """The TypeError or ValueError ``accuracy_reward`` would raise for this gold and label set
    (no collection of names, two labels alike, the gold not among them), ahead of any completion."""
    _label_matcher(gold, labels)


def accuracy_reward(completion: str, gold: str, labels: Iterable[str]) -> float:
    gold_label, match = _label_matcher(gold, labels)
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    return 1.0 if match(answer) == gold_label else 0.0


def reward(completion: str, gold: str, labels: Iterable[str], thinking: bool = True) -> float:
    acc = accuracy_reward(completion, gold, labels)
    return format_reward(completion) + acc if thinking else acc
