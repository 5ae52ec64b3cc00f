"""CLS-RL rewards for classification (DESIGN 3.5).

* ``format_reward``: 1 iff the completion is exactly ``<think>...</think>`` followed by
  ``<answer>...</answer>``, with only whitespace around and between them, one of each
  and no tag inside another.
* ``accuracy_reward``: 1 iff the answer names exactly one class of the label set and it is
  the gold one. The answer is the content of the ``<answer>`` block when the completion
  has answer tags (several blocks, or an unclosed one: 0), else the whole completion
  (the no-thinking variant, where the model may answer bare). Both answer and labels are
  normalised: lower case, ``\\text{}``/``\\mathrm{}``/``\\textbf{}``/``\\mathbf{}``/``\\boxed{}``
  unwrapped, whitespace collapsed, punctuation (and ``$``) stripped from both ends.
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
_WRAPPER = re.compile(r"\\(?:text|mathrm|textbf|mathbf|textit|boxed)\s*\{([^{}]*)\}")
_STRIP = string.punctuation + string.whitespace


def _check_str(name: str, value) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def normalize(text: str) -> str:
    """Lower-cased, wrappers removed, whitespace collapsed, end punctuation stripped."""
    _check_str("text", text)
    prev = None
    while prev != text:  # nested wrappers: \text{\mathrm{cat}}
        prev, text = text, _WRAPPER.sub(r"\1", text)
    text = " ".join(text.lower().split())
    keep = [i for i, c in enumerate(text) if not _stripped(c)]
    return text[keep[0]:keep[-1] + 1] if keep else ""


def _stripped(c: str) -> bool:
    """Punctuation (and $) of any script, as the ends of an answer: “cat”, cat。, «cat», cat…"""
    return c in _STRIP or unicodedata.category(c).startswith(("P", "Z"))


def format_reward(completion: str) -> float:
    _check_str("completion", completion)
    m = _FORMAT.match(completion)
    # the non-greedy groups could still swallow a second or nested tag: reject any tag inside
    if m is None or _TAG.search(m.group(1)) or _TAG.search(m.group(2)):
        return 0.0
    return 1.0


def extract_answer(completion: str) -> str | None:
    """The single ``<answer>`` block's content; the whole completion when it has no
    answer tag; None when the tags are ambiguous (several blocks, unbalanced, or any other
    spelling of the tag beside the block, e.g. ``<ANSWER>``, as format_reward counts them)."""
    _check_str("completion", completion)
    tags = _ANSWER_TAG.findall(completion)
    if not tags:
        return completion
    block = _ANSWER.search(completion)
    return block.group(1) if tags == ["<answer>", "</answer>"] and block else None


def _label_index(gold: str, labels: Iterable[str]) -> tuple[dict[str, str], str]:
    _check_str("gold", gold)
    if isinstance(labels, str):  # "cat" would otherwise be the label set {c, a, t}
        raise TypeError("labels must be a collection of class names, not a single str")
    labels = list(labels)
    if not labels:
        raise ValueError("labels must not be empty")
    index: dict[str, str] = {}
    for label in labels:
        _check_str("each label", label)
        key = normalize(label)
        if not key:
            raise ValueError(f"label {label!r} is empty after normalisation")
        if key in index and index[key] != label:
            raise ValueError(f"labels {index[key]!r} and {label!r} are the same after normalisation")
        index[key] = label
    gold_key = normalize(gold)
    if gold_key not in index:
        raise ValueError(f"gold {gold!r} is not in the label set {labels!r}")
    return index, gold_key


def accuracy_reward(completion: str, gold: str, labels: Iterable[str]) -> float:
    index, gold_key = _label_index(gold, labels)
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    key = normalize(answer)
    return 1.0 if key in index and key == gold_key else 0.0


def reward(completion: str, gold: str, labels: Iterable[str], thinking: bool = True) -> float:
    acc = accuracy_reward(completion, gold, labels)
    return format_reward(completion) + acc if thinking else acc
