"""Rule-based math answer verifier (DESIGN 3.5): extraction, sympy equivalence, hard time limit.

Public API (DESIGN 3.6): ``extract_answer``, ``verify``, ``score``, ``verify_batch``, ``explain``,
and ``score_batch``. A gold is a str or a finite number (anything else is a TypeError, NaN a
ValueError); a GSM8K solution ("... #### 72") stands for its final answer.

How a verdict is reached (``_check`` runs in a worker process):

1. Hacking screen on the raw answer: empty, no letter or digit, prompt injection /
   self-grading words the gold lacks, unevaluated restatements (``\\int``, ``\\sum``,
   ``\\lim``, ``\\binom`` ... the gold lacks: "\\binom{5}{2}" is no answer to 10, though 10
   answers a gold "\\binom{5}{2}") and equations whose left side is not a plain label
   ("7=3", "5+2=3") all reject.
2. Normalisation: ``$``, ``\\boxed``, ``\\left/\\right``, spacing commands, ``\\text``/``\\mathrm``
   units, currency, ordinal suffixes, degrees, thousands separators ("1,000", "1\\,000",
   "1{,}000"), leading zeros ("042" is 42), ``\\varnothing`` and ``\\mathbb{R}`` (less listed
   numbers, ``\\mathbb{R}\\setminus\\{0\\}`` or "x \\neq 0", as a union of open intervals); "x = 3" -> "3",
   "AB = 5", "\\angle A = 30^\\circ" -> the right side; "f(z) = 2z" -> "2z" with its variable
   renamed to the gold's.
3. Structure: answers split at top-level commas (and "or"/"and").  The element count
   must equal the gold's, so listing extra candidates ("3 or 4" for 3, "A, B, C, D"
   for C) rejects.  ``\\{..\\}`` sets and bare lists compare unordered (multiset
   matching); ``(a, b, c)`` tuples and matrices compare in order; two-element
   bracketed pairs compare as intervals with their open/closed ends respected;
   ``\\cup`` unions compare as unordered lists of intervals; inequalities on one
   variable become intervals.
4. Scalars: parsed into sympy by a small, whitelisting LaTeX translator (never eval
   of arbitrary text; ``i`` is the imaginary unit, ``e`` Euler's number, ``|x|`` and ``n!``
   absolute value and factorial, ``\\binom{n}{k}`` n!/(k!(n-k)!), ``\\log_b x`` a logarithm to base b; "1.5e-3" and
   "1e-9" are scientific, "2e+1" is 2e + 1; "3\\frac{1}{2}" and "3 1/2" are mixed numbers, 3 + 1/2, also in
   a tuple or after a label ("(1, 2 1/2)", "x = 2 1/2"; "3\\frac{1}{2}^2" is 3 * (1/2)^2, "x^2 1/2" does not
   parse); "0.1\\overline{6}", "0.1\\bar{6}", "0.1\\dot{6}", "0.\\dot{1}4\\dot{2}" and
   "2.(5)" are recurring decimals ("0.5(4)" stays a product), and so is a decimal before an ellipsis
   ("\\ldots", "\\cdots", "...") whose digits end in a period shown twice, or one digit shown three times
   ("0.333\\ldots" is 1/3, "0.142857142857..." 1/7; "0.33\\ldots" and "3.1415\\ldots" are the decimals they
   show, under the rounding rule below, which also reads them as truncated); a function without brackets
   takes the product after it, fractions included, up to an operator, a bracket or another function
   ("\\cos \\frac{2}{3}\\pi" is cos(2pi/3), "\\sin 2x" sin(2x), "\\sin x \\cos x" sin(x) cos(x), "\\cos(2/3)\\pi"
   cos(2/3) * pi); "n(n-1)!" is n * (n-1)!, "n!!" the double factorial; two numbers side by side, "5 6", do
   not parse: no product).  Integers, fractions and decimals compare exactly ("2.0000000000001" is not 2: a
   decimal literal is the rational it writes), other numbers (roots, pi, logarithms) to 25
   digits, evaluated at 30 in sympy's floats (10^{400} does not overflow), and a difference that
   cancels to no digit at all (an exact 0 against a gold 0) by ``simplify``.  Expressions compare
   by a numeric check at random points (points where a side is infinite decide nothing, and an
   infinite or undefined value compares exactly: "\\infty" is no x^2), and by
   ``simplify(gold - answer) == 0`` when the numeric check cannot decide.  Equations compare as "same solution set": the two
   ``lhs - rhs`` differ by a nonzero constant factor.  A percentage may be read as
   itself or divided by 100 ("25%" matches 25 and 0.25), but two percentages compare as
   written; degrees as themselves or in radians ("30^\\circ" matches 30 and pi/6); a
   ratio of two numbers "5:8" as 5/8; a number (a fraction or mixed number too) followed by words ("7 stuffed
   goats", "2\\frac{1}{2}\\text{ cups}") as the number ("3 million": 3 * 10^6), unless the words hedge or negate
   ("not", "or", "maybe", "wrong", ...).

Rounding rule: a decimal literal matches an exact (or longer) value when it has at
least 4 significant digits and equals that value rounded to the decimal's number of
decimal places.  It holds in both directions: answer "85.71" for gold 600/7 and gold
"180.67" for answer 542/3 are accepted; "0.33" for 1/3 and "3.14" for pi are rejected
(too few significant digits), as is "85.72" for 600/7 (wrong rounding).  A decimal before
an ellipsis that shows no period (the first digits of a longer number) also matches a value it
truncates: "3.1415\\ldots" and "-3.1415\\ldots" match pi and -pi, though pi rounds to 3.1416
("3.1415" alone does not; "3.1417\\ldots" is no pi, "3.14\\ldots" too short).  A percentage is
rounded as written: "33.33%" matches 1/3 (an angle in degrees is not: "114.6°" is no 2, and a
percentage is never compared with an angle).

Time limit: every check runs in a pool of worker processes.  A check that exceeds
its limit is a rejection: the hung worker is killed and replaced, and the caller
returns within the limit plus process start-up.  ``verify_batch`` keeps the pool
warm across calls; a forked child starts its own.  A daemonic process (a
``multiprocessing.Pool`` or DataLoader worker), which may not start processes, runs
the checks itself, stopped by SIGALRM on its main thread (elsewhere without a
limit).  The only work done on the caller's thread is string handling (extraction,
the fast path for strings equal after normalisation and the hacking screen), which
is linear in the input size.
"""

from __future__ import annotations

import atexit
import cmath
import decimal
import fractions
import multiprocessing as mp
import numbers
import os
import random
import re
import threading
import time
from multiprocessing.connection import wait as _mp_wait

__all__ = ["extract_answer", "verify", "score", "verify_batch", "explain", "DEFAULT_TIMEOUT"]


_LONGEST_TIMEOUT = 1e6  # seconds (11.6 days); the pool's wait for its workers takes at most 2**31 ms


def _seconds(name: str, value) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    # (NaN: a check under it never ended; 0 rejected every answer in the pool, limited none in a daemonic process)
    if not 0 < seconds <= _LONGEST_TIMEOUT:
        raise ValueError(f"{name} must be a number of seconds in (0, {_LONGEST_TIMEOUT:g}], got {value!r}")
    return seconds


DEFAULT_TIMEOUT = _seconds("FASTRL_VERIFY_TIMEOUT", os.environ.get("FASTRL_VERIFY_TIMEOUT", "5.0"))
_MAX_LEN = 2000  # longer "answers" are not answers; also bounds the work per check

# --------------------------------------------------------------------------- extraction


def _closing_braces(s: str) -> dict[int, int]:
    """Index of each balanced "{" -> index of its "}", in one pass (so extraction stays linear)."""
    close, opened = {}, []
    for j, c in enumerate(s):
        if c == "{":
            opened.append(j)
        elif c == "}" and opened:
            close[opened.pop()] = j
    return close


def _braced(s: str, i: int):
    """Content of the {...} group starting at s[i] == '{' and the index after it."""
    j = _closing_braces(s).get(i)
    return (None, len(s)) if j is None else (s[i + 1 : j], j + 1)


_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_BOX_TOKEN = re.compile(r"[^\s$]*")  # the answer of a brace-less "\boxed 5"
_INNER_BOX = re.compile(r"\s*\\(?:boxed|fbox)\s*\{")
_SPACE = re.compile(r"\s*")


def _whole_box(s: str) -> str | None:
    """The contents of the box that is all of s ("\\boxed{\\boxed{3}}": 3), else None."""
    box = _BOX.match(s)
    if box is None:
        return None
    i = box.end()
    if i < len(s) and s[i] == "{":
        whole = _closing_braces(s).get(i) == len(s) - 1
    else:
        whole = _BOX_TOKEN.match(s, i).end() == len(s)
    return _boxed_all(s)[0] if whole else None


def _boxed_all(s: str) -> list[str]:
    """The outermost boxes' contents; a box holding just another box is that box's ("\\boxed{\\boxed{3}}": 3)."""
    out, close, end = [], None, 0
    for m in _BOX.finditer(s):
        i = m.end()
        if m.start() < end:  # inside the previous box
            continue
        if i < len(s) and s[i] == "{":
            close = _closing_braces(s) if close is None else close
            j = close.get(i)
            if j is None:
                continue
            end = j + 1
            while (inner := _INNER_BOX.match(s, i + 1)) and close.get(inner.end() - 1, j) < j \
                    and _SPACE.match(s, close[inner.end() - 1] + 1).end() == j:
                i, j = inner.end() - 1, close[inner.end() - 1]
            out.append(s[i + 1 : j])
        else:  # "\boxed 5"
            tok = _BOX_TOKEN.match(s, i)  # (not s[i:]: a copy per box is quadratic in "\boxed\boxed...")
            end = tok.end()
            out.append(tok.group(0))
    return out


# "the answer is", "the correct answer is", "Final Answer:", "**Answer:**" (markdown), a line
# starting "Answer:", GSM8K's closing "#### 72" (on the last line: elsewhere "####" opens a heading)
_ANSWER_MARK = re.compile(r"(?:final\s+answer|the\s+(?:(?:correct|right|final)\s+)?answer)\s*[*_]*\s*(?:is\b|[:：])"
                          r"|^[ \t]*[*_]*\s*answer\s*[*_]*\s*[:：]|^[ \t]*####(?!#)(?=[^\n]*\s*\Z)", re.I | re.M)
# $...$ (an escaped "\$", a dollar sign, inside it: "$\$18$"), $$...$$, \[...\], \(...\)
_DOLLAR_SPAN = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$((?:\\.|[^$\\])+)\$", re.S)
_MATH_SPAN = re.compile(_DOLLAR_SPAN.pattern + r"|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.S)


def _after_mark(tail: str) -> str | None:
    """The answer that follows an answer mark: a math span that opens it (which may run over
    lines: "is:\n\\[\n5\n\\]"), else the rest of its line up to the end of the sentence."""
    tail = re.sub(r"^[\s*_:：]+", "", tail)
    span = _MATH_SPAN.match(tail)
    if span:
        return next(g for g in span.groups() if g is not None).strip() or None
    line = tail.split("\n", 1)[0]
    line = re.split(r"\.\s+(?=[A-Z])", line, 1)[0]  # "5. I hope it is correct."
    line = re.split(r",?\s+(?:because|since)\b", line, 1)[0]  # "3 because 1+2=3" (a reason, not a hedge)
    # a trailing period and markdown emphasis, by a scan from the end: the regex for it took
    # time cubic in a run of spaces or underscores inside the line (8 s for 2000)
    line = _rstrip_emphasis(line)
    line = _rstrip_emphasis(line[:-1]) if line.endswith(".") and not _ENDS_IN_ELLIPSIS.search(line) else line
    return _strip_math_delims(line) or None


# a decimal and an ellipsis at the end of a line, "0.333...": the dots are the answer's, no sentence's end
_ENDS_IN_ELLIPSIS = re.compile(r"\d\.\d+\s*\.\.\.$")


def _rstrip_emphasis(s: str) -> str:
    end = len(s)
    while end and (s[end - 1].isspace() or s[end - 1] in "*_"):
        end -= 1
    return s[:end]


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion, or None.

    The last ``\\boxed{}`` when all boxed answers agree as text (several different: None,
    so a model cannot hedge by boxing several values); else what follows the last "the
    answer is" ("the correct answer is"), "Final Answer:", "Answer:" or a line's opening
    "####" (GSM8K) (markdown emphasis dropped; a ``$...$`` (a "\\$" in it is a dollar sign),
    ``\\[...\\]`` or ``\\(...\\)`` right after it taken whole, else the rest of the
    sentence up to a "because" or "since"); else a final bare expression (the last ``$...$``
    of the last line, or a short last line less an opening "Therefore,", "Thus", "Hence" or
    "So", or the last number).
    """
    if not completion or not completion.strip():
        return None
    # one space or newline for each run of white space: the regexes below backtrack over a long
    # run (a degenerate completion padded with spaces took 38 s) and none needs more than one
    completion = re.sub(r"\s+", lambda m: "\n" if "\n" in m.group(0) else " ", completion)
    boxed = _boxed_all(completion)
    if boxed:
        keys = {_canon(b) for b in boxed}
        return boxed[-1].strip() if len(keys) == 1 else None
    marks = list(_ANSWER_MARK.finditer(completion))
    if marks:
        return _after_mark(completion[marks[-1].end():])
    lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
    last = re.sub(r"^(?:therefore|thus|hence|so)\b,?\s*", "", lines[-1], flags=re.I) or lines[-1]  # "Therefore, x = 5"
    # ($ spans only: an unclosed "\[" let every later one scan to the line's end, quadratic in its length)
    dollars = [m.group(1) or m.group(2) for m in _DOLLAR_SPAN.finditer(last)]
    if dollars:
        return dollars[-1].strip()
    if len(last) <= 40 and not re.search(r"[a-zA-Z]{4,}\s+[a-zA-Z]{2,}", last):
        return _strip_math_delims(last if _ENDS_IN_ELLIPSIS.search(last) else last.rstrip(".")) or None
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", last)
    return nums[-1] if nums else None


def _strip_math_delims(s: str) -> str:
    s = s.strip()
    s = re.sub(r"^\$+|\$+$", "", s)
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s)
    return s.strip()


# ------------------------------------------------------------------------- normalisation

# words aimed at a grader, not ordinary words of a word problem ("score", "pass", "previous")
_INJECTION = re.compile(
    r"ignore|instruction|grader|grading|reward|verifier|is correct|mark(?:ed)? (?:as|it)|"
    r"full (?:marks|credit)|(?:perfect|full|maximum|max) score|assistant|system prompt|"
    r"\bpass(?:es)? (?:this|the (?:check|test|grader|verifier))",
    re.I,
)
_UNEVALUATED = re.compile(r"\\frac\s*\{\s*(?:d|\\mathrm\{d\})\^?\S*\s*\}\s*\{\s*(?:d|\\mathrm\{d\})\s*[a-z]|\\int|\\sum|\\prod|\\lim|\\oint|\\partial|\bd/d|\\binom|\\choose|\\mathrm\{d\}|Integral|Sum\(|Limit")
_UNITS = (
    r"(?:dollars?|cents?|units?|square\s+(?:units|feet|meters|inches|cm|m)|"
    r"sq\.?\s*(?:units?|ft|feet|m|meters?|metres?|cm|mm|km|in|inches|mi|miles?)\b|cm|mm|km|kg|mg|"
    r"meters?|metres?|feet|foot|ft|inches|inch|miles?|mph|hours?|hrs?|minutes?|mins?|seconds?|secs?|"
    r"days?|weeks?|months?|years?|degrees?|deg|liters?|litres?|ml|pounds?|lbs?|ounces?|oz|people|students|"
    r"ways|cookies|apples|marbles|points|times|grams?|kilograms?|yuan|euros?|"
    r"(?:km|m|mi|cm|ft|miles?|meters?|metres?|feet)\s*/\s*(?:h|hr|hours?|s|sec|seconds?|min|minutes?)(?:\^\{?2\}?)?)"
)


def _canon(s: str) -> str:
    """Cheap textual normal form, for boxed answers' agreement: "x = \\dfrac12" and "\\frac{1}{2}" agree."""
    s = _strip_math_delims(s or "")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[,;:! ]|~|\\quad|\\qquad", " ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\s+", "", _strip_label(s)[0])
    return s.rstrip(".")


# a decimal and an ellipsis after it: "0.333\ldots", "0.1666\cdots", "3.14159\dots", "0.333...", "0.333…"
# ("0.000\ldots1" is no recurring decimal: an ellipsis before a digit does not count)
_ELLIPSIS_AFTER_DECIMAL = re.compile(r"(?<![\w.])(\d*\.\d+)\s*(?:\\(?:ldots|cdots|dots[cbmo]?)(?![a-zA-Z])|\.{3,}|…)"
                                     r"(?!\s*[\d.])")
_REALS = r"(?:\\mathbb\s*\{\s*R\s*\}|\\mathbb\s*R|ℝ|\\R)"
_PLAIN_NUMBER = r"-?\d+(?:\.\d+)?"


def _reals_without_points(s: str) -> str:
    """The reals less a few numbers, "\\mathbb{R} \\setminus \\{1, 2\\}" or "x \\neq 1", as the union of
    intervals it is: "(-\\infty, 1) \\cup (1, 2) \\cup (2, \\infty)"."""
    m = (re.fullmatch(rf"\s*{_REALS}\s*(?:\\setminus|\\smallsetminus|\\backslash|-)\s*\\\{{(.*)\\\}}\s*", s)
         or re.fullmatch(rf"\s*[a-zA-Z]\s*\\neq?\s*({_PLAIN_NUMBER})\s*", s))
    if not m:
        return s
    points = [p.strip() for p in m.group(1).split(",")]
    if not all(re.fullmatch(_PLAIN_NUMBER, p) for p in points):
        return s
    ends = ["-\\infty", *sorted(set(points), key=float), "\\infty"]
    return " \\cup ".join(f"({a}, {b})" for a, b in zip(ends, ends[1:]))


def _normalise(s: str) -> str:
    s = _strip_math_delims(s)
    s = _whole_box(s) or s  # (a box beside other text, "\boxed{3}, 4", stays: an extra candidate)
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}")
    # digit groups "12\\,345", "1{,}000" (before "\\," becomes a space: "12 345" would be 12 * 345), and a
    # whole answer "1 000 000"
    s = re.sub(r"(?<![\d.])\d{1,3}(?:(?:\\,|\{,\})\d{3})+(?![\d.])", lambda m: re.sub(r"\D", "", m.group(0)), s)
    s = s.replace(" ", "") if re.fullmatch(r"\s*-?\d{1,3}(?: \d{3})+(?:\.\d+)?\s*", s) else s
    s = re.sub(r"(?<!\\)\\[,;:! ]|~|\\quad|\\qquad", " ", s)  # spacing (not the "\\" row break)
    # a decimal that ends in an ellipsis ("0.333\ldots", "0.1666...", "3.14159\cdots"): one mark, "…" (which the
    # strip of a sentence's period below leaves: it made "0.333..." 0.333); see _repeating_decimals
    # (not after a product sign: "0.5 \cdot 0.25 \cdots" is a product that goes on)
    s = _ELLIPSIS_AFTER_DECIMAL.sub(lambda m: m[0] if re.search(r"(?:\\cdot|\\times|[*×·])\s*$", m.string[:m.start()])
                                    else m[1] + "…", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    for u, l in (("∪", "\\cup"), ("≠", "\\neq"), ("×", "\\times"), ("÷", "\\div"), ("∈", "\\in")):
        s = s.replace(u, l)
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
    s = re.sub(r"\\(?:leqslant|le)(?![a-zA-Z])", "\\\\leq", s)
    s = re.sub(r"\\(?:geqslant|ge)(?![a-zA-Z])", "\\\\geq", s)
    s = s.replace("≤", "\\leq").replace("≥", "\\geq").replace("−", "-").replace("π", "\\pi").replace("∞", "\\infty")
    s = re.sub(r"(^|[\s(\[,=])–", r"\1-", s)  # an en dash where a minus sign stands ("–7"), not in a range "1–3"
    s = re.sub(r"\\varnothing|∅|\\\{\s*\\\}", r"\\emptyset", s)
    s = re.sub(rf"^\s*{_REALS}\s*$", r"(-\\infty, \\infty)", s)
    s = _reals_without_points(s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "°", s)  # degrees: a marker, see _scalar_equal
    s = s.replace("\\%", "%")
    s = s.replace("\\$", "").replace("$", "")  # currency
    # one-letter units only when written as text ("5\,\mathrm{m}"): a bare "2m" is 2*m
    s = re.sub(r"(?<=\d)\s*\\(?:text|mathrm|mbox)\s*\{\s*[a-zA-Z]\s*\}\s*(?:\^\s*\{?[23]\}?)?\s*$", "", s)
    # a word in text mode right after a number stands apart from it: "2\frac{1}{2}\text{cups}" is
    # "2\frac{1}{2} cups", a number and its unit (glued on, "2\frac{1}{2}cups" did not parse)
    s = re.sub(r"(?<=[\d}])\s*(\\(?:text|textbf|textit|mbox)\s*\{\s*[A-Za-z])", r" \1", s)
    # \text{...}/\mathrm{...}: units vanish, words stay as plain text
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|operatorname|mbox|textit|mathit)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"(\d)\s*\^?\{?(?:st|nd|rd|th)\}?(?![a-zA-Z])", r"\1", s)  # ordinals: 3rd, 12^{th}
    s = re.sub(r"(?<=\d)\s*per\s*cent\s*$", "%", s, flags=re.I)  # "5 percent" is 5%, not 5 in a unit
    # qualifiers after the answer: "f(x) = 1 for all x", "\approx 1.36"
    s = re.sub(r"(?<=\S)\s+(?:for\s+all|for\s+every|for\s+any|for\s+some|where|when)\b.*$", "", s, flags=re.S)
    s = re.sub(r"(?<=\S)\s*\\approx.*$", "", s, flags=re.S)
    s = re.sub(r"^\s*[a-zA-Z]\s*\\in\s*", "", s)  # "x \in [-2, 7]"
    # set-builder {x | ineq} / {x \mid ineq}: the inequality (then an interval)
    s = re.sub(r"^\\\{\s*[a-zA-Z]\s*(?:\||\\mid)\s*(.*)\\\}$", r"\1", s.strip())
    s = re.sub(r"(?:(?<=\d)\s*|(?<=\})\s+)" + _UNITS + r"(?:\^?\{?[23]\}?)?\s*$", "", s, flags=re.I)  # trailing units
    s = re.sub(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])", lambda m: m.group(1).replace(",", ""), s) \
        if re.fullmatch(r"\s*-?\d{1,3}(?:,\d{3})+(?:\.\d+)?\s*%?\s*", s) else s  # 1,000,000
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = re.sub(r"^\([a-zA-Z](?:\s*,\s*[a-zA-Z])+\)\s*=\s*(?=\()", "", s)  # "(x, y) = (1, 2)"
    s = re.sub(r"\.\s*([\])])$", r"\1", s)  # a sentence period before the closing bracket: "(a, b.]"
    # circled choice numbers (①②③, common in multiple-choice keys) are a list of numbers
    if re.fullmatch(r"[\u2460-\u2473](?:\s*[,、]?\s*[\u2460-\u2473])*", s):
        s = ", ".join(str(ord(c) - 0x2460 + 1) for c in s if "\u2460" <= c <= "\u2473")
    s = re.sub(r"^(?:infinitely\s+many|infinite(?:ly)?)(?:\s+[a-z]+)?$", "\\\\infty", s, flags=re.I)
    s = re.sub(r"^(-?)(\d+) (\d+)/(\d+)$", r"\1(\2+\3/\4)", s)  # a mixed number "3 1/2" (for "3\frac12": _latex_to_py)
    return s


# ------------------------------------------------------------------------- structure


def _split_top(s: str, seps=(",", ";")) -> list[str]:
    parts, depth, cur = [], 0, ""
    i = 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0 and c in seps:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts]


def _candidates(s: str) -> list[str]:
    """Top-level alternatives/elements: "3 or 4", "3 and 4", "3, 4"."""
    s = re.sub(r"\s+(?:or|and)\s+", ",", s)
    s = re.sub(r"\\(?:text\{\s*(?:or|and)\s*\}|lor|vee)", ",", s)
    if "\\cup" in s:
        return [p.strip() for p in s.split("\\cup")]
    parts = [p for p in _split_top(s) if p != ""]
    out = []
    for p in parts:  # "\pm 2" -> 2, -2; "(\pm 1, \pm 2)" -> the four sign combinations
        if p.startswith("(") and p.endswith(")") and 1 <= p.count("\\pm") <= 4 and len(_split_top(p[1:-1])) > 1:
            combos = [""]
            for piece in re.split(r"(\\pm)", p):
                combos = [c + (piece if piece != "\\pm" else sg) for c in combos for sg in (("+", "-") if piece == "\\pm" else ("",))]
            out += combos
        elif p.count("\\pm") == 1:
            out += [p.replace("\\pm", "+"), p.replace("\\pm", "-")]
        else:
            out.append(p)
    return out


# a one-letter name ("x", "m_{\max}"), a command ("\alpha"), and geometry's "AB", "\angle ABC",
# "m\angle A", "\overline{AB}" (two lower-case letters "xy" are a product)
_LABEL = (r"(?:[a-zA-Z](?:_\{[^{}]*\}|_\w)?|[A-Z]{2}|(?:m\s*)?\\angle\s*[A-Z]{1,3}"
          r"|\\(?:overline|widehat|overarc)\s*\{[A-Z]{2,3}\}|\\[a-zA-Z]+)")


def _strip_label(s: str):
    """'x = 3' -> ('3', None); 'f(z) = 2z' -> ('2z', 'z'); otherwise (s, None)."""
    # "x = y = 3", "m_{\max} = 3", "\alpha = 3", "Maximum = 2", "Paolo: 18" (word labels), "(x, y) = (1, 2)"
    s = re.sub(r"^\s*\([a-zA-Z](?:\s*,\s*[a-zA-Z])+\)\s*=\s*(?=\()", "", s)
    m = re.fullmatch(r"\s*[A-Za-z]{3,}(?: [A-Za-z]+)*\s*[:=]\s*(.+)", s)  # a word of 3+ letters
    label = re.split(r"[:=]", s, 1)[0]
    if m and "=" not in m.group(1) and not re.search(r"\d", label) and not _HEDGE.search(label):
        return m.group(1).strip(), None  # (a hedge is no label: "Maybe: 4", "not: 4")
    m = re.fullmatch(rf"\s*((?:{_LABEL}\s*=\s*)+)(.+)", s)
    if m and "=" not in m.group(2) and not _HEDGE.search(m.group(1)):  # ("NO = 4", "OR = 4": no label)
        return m.group(2).strip(), None
    m = re.fullmatch(r"\s*[a-zA-Z]\s*\(\s*(\w+)\s*\)\s*=\s*(.+)", s)  # f(x) = ..., T(10) = 2
    if m and "=" not in m.group(2):
        return m.group(2).strip(), (m.group(1) if m.group(1).isalpha() else None)
    return s, None


def _matrix_to_tuple(s: str) -> str:
    m = re.fullmatch(r"\\begin\{[pbvB]?matrix\}(.*)\\end\{[pbvB]?matrix\}", s.strip(), re.S)
    if not m:
        return s
    rows = [r.strip() for r in m.group(1).split("\\\\") if r.strip()]
    cells = [[c.strip() for c in r.split("&")] for r in rows]
    if all(len(r) == 1 for r in cells):  # column vector == tuple
        return "(" + ", ".join(r[0] for r in cells) + ")"
    return "(" + ", ".join("(" + ", ".join(r) + ")" for r in cells) + ")"


_INEQ = re.compile(r"(<=|>=|<|>|\\leq|\\geq|\\lt|\\gt)")


def _ineq_to_interval(s: str) -> str:
    """'x > 3' -> '(3, \\infty)'; '-1 \\leq x < 2' -> '[-1, 2)'; otherwise s unchanged."""
    parts = _INEQ.split(s)
    if len(parts) not in (3, 5):
        return s
    toks = [p.strip() for p in parts]
    op = lambda o: {"\\leq": "<=", "\\geq": ">=", "\\lt": "<", "\\gt": ">"}.get(o, o)
    is_var = lambda t: re.fullmatch(r"[a-zA-Z]|\\[a-zA-Z]+", t) is not None and t not in ("\\infty", "\\pi")
    if len(toks) == 3:
        a, o, b = toks[0], op(toks[1]), toks[2]
        if is_var(b) and not is_var(a):  # 3 < x -> x > 3
            a, b, o = b, a, {"<": ">", ">": "<", "<=": ">=", ">=": "<="}[o]
        if not is_var(a):
            return s
        if o in (">", ">="):
            return ("(" if o == ">" else "[") + b + ", \\infty)"
        return "(-\\infty, " + b + (")" if o == "<" else "]")
    lo, o1, v, o2, hi = toks[0], op(toks[1]), toks[2], op(toks[3]), toks[4]
    if not is_var(v):
        return s
    if o1 in (">", ">=") and o2 in (">", ">="):
        lo, hi, o1, o2 = hi, lo, {">": "<", ">=": "<="}[o2], {">": "<", ">=": "<="}[o1]
    if o1 not in ("<", "<=") or o2 not in ("<", "<="):
        return s
    return ("(" if o1 == "<" else "[") + lo + ", " + hi + (")" if o2 == "<" else "]")


# ---------------------------------------------------------------------- LaTeX -> sympy

_FUNCS = {"sqrt", "log", "ln", "exp", "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos",
          "arctan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "Abs", "factorial", "factorial2", "ceiling", "floor"}
_GREEK = {"alpha", "beta", "gamma", "delta", "theta", "lambda", "mu", "phi", "omega", "sigma", "tau", "rho"}
_CONST = {"pi", "E", "I", "oo"}


def _latex_to_py(s: str) -> str | None:
    """Translate a LaTeX scalar into a restricted Python/sympy expression string, or None."""
    # ("\cdots" is no "\cdot" and an "s")
    s = re.sub(r"\\(?:cdot|times|ast)(?![a-zA-Z])", "*", s).replace("\\div", "/")
    s = re.sub(r"\\infty|\\infin", " oo ", s)
    s = re.sub(r"\\(sin|cos|tan)\s*\^\s*\{\s*-1\s*\}", r"\\arc\1", s)  # \tan^{-1} = \arctan
    s = _bare_fraction_arguments(s)
    s = re.sub(r"\\lceil", " ceiling(", s).replace("\\rceil", ")")
    s = re.sub(r"\\lfloor", " floor(", s).replace("\\rfloor", ")")
    s = re.sub(r"\\pi(?![a-zA-Z])", " pi ", s)
    s = re.sub(r"\\[lr]?vert(?![a-zA-Z])", "|", s)
    s = _log_bases(s)
    s = re.sub(r"\\(ln|log|exp|sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|sinh|cosh|tanh)(?![a-zA-Z])", r" \1 ", s)  # "\ln2" is ln 2
    for g in _GREEK:
        s = re.sub(r"\\" + g + r"(?![a-zA-Z])", " " + g + " ", s)
    # {n \choose k} is \binom{n}{k}
    s = re.sub(r"\{([^{}]*)\\choose(?![a-zA-Z])([^{}]*)\}", r"\\binom{\1}{\2}", s)
    s = re.sub(r"\\[dt]binom(?![a-zA-Z])", r"\\binom", s)
    s = _repeating_decimals(s)
    # mixed numbers: "3\frac{1}{2}" is 3 + 1/2 (a whole number before a fraction of digits is never a
    # product), but not in an exponent or index ("x^2\frac{1}{2}"), not as a command's bare argument
    # ("\sqrt 2\frac12", "\sqrt[3]2\frac12", "\frac 32\frac12") and not before a power, which takes the fraction
    s = re.sub(r"(?<![\w.^_}])(?<!\])(\d+)\s*\\frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))(?!\s*\^)",
               lambda m: m[0] if re.search(r"\\[a-zA-Z]+\s*$", m.string[:m.start()]) else
               f"({m[1]}+{m[2] or m[3]}/{m[4] or m[5]})", s)
    # a mixed number "2 1/2" as a term of its own, between the start, a bracket, a comma, "=", "+" or "-" and
    # the end or one of them: 2 + 1/2 (never the product 2 * 1/2; "x^2 1/2", "a 1/2", "2 1/2^2" stay unparsed)
    s = re.sub(r"(?:^|(?<=[(\[{,=+\-]))(\s*)(\d+) +(\d+)/(\d+)(?=\s*(?:$|[)\]},=+\-]))", r"\1(\2+\3/\4)", s)
    # \frac{a}{b}, \frac12, \binom{n}{k}, \sqrt[n]{a}, \sqrt{a}, \sqrt2
    for _ in range(50):
        m = re.search(r"\\frac|\\binom|\\sqrt", s)
        if not m:
            break
        i = m.end()
        while i < len(s) and s[i] == " ":
            i += 1
        args = []
        root = None
        if m.group(0) == "\\sqrt" and i < len(s) and s[i] == "[":
            j = s.find("]", i)
            if j < 0:
                return None
            root, i = s[i + 1 : j], j + 1
        for _k in range(1 if m.group(0) == "\\sqrt" else 2):
            while i < len(s) and s[i] == " ":
                i += 1
            if i < len(s) and s[i] == "{":
                a, i = _braced(s, i)
                if a is None:
                    return None
            elif i < len(s):
                a, i = s[i], i + 1
            else:
                return None
            args.append(a)
        if m.group(0) == "\\frac":
            rep = "((" + args[0] + ")/(" + args[1] + "))"
        elif m.group(0) == "\\binom":  # in factorials: a scalar holds no comma (binomial(n, k))
            n, k = args
            rep = f"(factorial({n})/(factorial({k})*factorial(({n})-({k}))))"
        elif root is not None:
            rep = "((" + args[0] + ")**(1/(" + root + ")))"
        else:
            rep = "sqrt(" + args[0] + ")"
        s = s[: m.start()] + rep + s[i:]
    if "\\" in s:
        return None  # an unknown command: not something we evaluate
    s = re.sub(r"_\{\s*(\w+)\s*\}", r"_\1", s)  # x_{1} is x_1
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    # 1.5e3, 1.5e-3, 1e-10, 1e-9, 1E-6: scientific; a one-digit signed exponent on an integer
    # other than 1 after a lowercase e is Euler's e as LaTeX means it ("2e+1" = 2e + 1, as
    # math-verify reads it; nobody writes e as "1e")
    s = re.sub(r"(?<![\d.])(\d+\.\d+|\d+)([eE])(\d+|[+-]\d+)(?![\d.])",
               lambda m: m.group(0) if m.group(1) != "1" and "." not in m.group(1) and m.group(2) == "e"
               and re.fullmatch(r"[+-]\d", m.group(3)) else f"{m.group(1)}*10**({m.group(3)})", s)
    s = re.sub(r"(?<![\d.\w])0+(?=\d)", "", s)  # 042 is 42 (Python reads "042" as 0 times 42)
    s = re.sub(r"(\d+(?:\.\d+)?)\s*%", r"(\1/100)", s)
    s = re.sub(r"\bln\b", "log", s)
    s = _abs_bars(s)
    if s is None or re.search(r"[^A-Za-z0-9_+\-*/(). !]", s) or "__" in s:
        return None
    s = _factorials(s)
    if s is None:
        return None

    def ident(m):  # whitelist identifiers; split unknown words ("xy" -> x*y)
        w = m.group(0)
        if w in _LETTER_CONSTANTS:
            return _LETTER_CONSTANTS[w]
        if w in _FUNCS or w in _GREEK or w in _CONST or re.fullmatch(r"[a-zA-Z](_\w+)?", w):
            return w
        if len(w) <= 3 and w.isalpha():
            return "*".join(_LETTER_CONSTANTS.get(c, c) for c in w)
        raise ValueError(w)

    s = _bare_function_arguments(s)
    try:
        s = re.sub(r"[A-Za-z_]\w*", ident, s)
    except ValueError:
        return None
    return re.sub(r"(?<![\w.])(\d+(?:\.\d+)?)(?=[A-Za-z])", r"\1*", s)  # 2E is 2 * E, not the float 2e0


# a period over one or more digits (\overline, \bar), dotted (one digit, or its first and last
# digits: 0.\dot{1}4\dot{2} is 0.142142...), or in brackets right after the point (2.(5); "0.5(4)"
# stays a product: a period there may also read as an uncertainty, 1.23(1))
_DIGIT_ARG = r"(?:\{\s*(\d)\s*\}|(\d))"
_REPEATING = re.compile(r"(?<![\w.])(\d*)\.(?:(\d*)(?:\\(?:overline|bar)\s*(?:\{\s*(\d+)\s*\}|(\d))"
                        rf"|\\dot\s*{_DIGIT_ARG}(?:(\d*)\\dot\s*{_DIGIT_ARG})?)|\((\d+)\))(?![\d.])")


def _repeating_decimals(s: str) -> str:
    """0.\\overline{3}, 0.1\\dot{6}, 0.\\dot{1}4\\dot{2}, 2.(5): the fraction the recurring decimal equals."""
    def recurring(whole, fixed, period):  # whole.fixed followed by period, repeated
        numerator = int(whole + fixed + period) - int(whole + fixed)
        return f"({numerator}/{(10 ** len(period) - 1) * 10 ** len(fixed)})"

    def fraction(m):
        dotted = (m[5] or m[6] or "") + (m[7] or "") + (m[8] or m[9] or "")
        return recurring(m[1] or "0", m[2] or "", m[3] or m[4] or dotted or m[10])

    def shown(m):
        whole, digits = m[1] or "0", m[2]
        p = _shown_period(digits)
        return recurring(whole, digits[:-p], digits[-p:]) if p else f"{whole}.{digits}"

    return _ELLIPSIS_DECIMAL.sub(shown, _REPEATING.sub(fraction, s))


# a decimal that ends in an ellipsis (the mark "…" of _normalise) recurs when the digits after its point end in
# a period: the shortest block shown twice in a row at the end ("0.1212…", "0.142857142857…"), or one digit shown
# three times ("0.333…", "0.1666…"; "0.33…" shows no period). Other digits ("3.14159…") are the decimal they
# show, which the rounding rule may match, rounded as "3.14159" is or truncated ("3.1415…" for pi: _round_match);
# _scalar_equal also tries that reading of a recurring one with 4 significant digits ("2.718281828…" for e;
# "0.3333…" for a gold 0.3333, not "0.333…" for 0.333).
_ELLIPSIS_DECIMAL = re.compile(r"(?<![\w.])(\d*)\.(\d+)…")


def _shown_period(digits: str) -> int:
    """The length of the period the digits end in (see _ELLIPSIS_DECIMAL), 0 for none."""
    for p in range(1, len(digits) // 2 + 1):
        shown = 3 if p == 1 else 2
        if p * shown <= len(digits) and digits[-p * shown:] == digits[-p:] * shown:
            return p
    return 0


def _approximation_shown(s: str) -> bool:
    """Whether each recurring decimal before an ellipsis in s shows 4 significant digits (the rounding rule's)."""
    return all(len((m[1] + m[2]).lstrip("0")) >= 4 for m in _ELLIPSIS_DECIMAL.finditer(s) if _shown_period(m[2]))


def _drop_ellipses(s: str) -> str:
    """Each decimal before an ellipsis as its digits show it: "0.333…" -> "0.333"."""
    return _ELLIPSIS_DECIMAL.sub(r"\1.\2", s)


_BARE_FUNCTION = re.compile(r"\\(?:arcsin|arccos|arctan|sinh|cosh|tanh|sin|cos|tan|cot|sec|csc|ln|log|exp)(?![a-zA-Z])")
_FACTOR = re.compile(r"\s*(?:\\frac(?![a-zA-Z])|\d+(?:\.\d+)?…?|[a-zA-Z]|\\(?:pi|" + "|".join(sorted(_GREEK))
                     + r")(?![a-zA-Z]))")


def _argument_end(s: str, i: int, close: dict) -> int:
    """The end of the command argument at s[i] (spaces skipped): a braced group, a command or one character;
    -1 for none."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s) or s[i] in "}^_":
        return -1
    if s[i] == "{":
        return close[i] + 1 if i in close else -1
    command = re.match(r"\\[a-zA-Z]+", s[i:i + 40])
    return i + (command.end() if command else 1)


def _bare_fraction_arguments(s: str) -> str:
    """A function written without brackets takes a product with a fraction in it as LaTeX means it:
    "\\cos \\frac{2}{3}\\pi" is cos(2pi/3), "\\sin 2\\frac{\\pi}{3}" sin(2pi/3), "\\log_2 \\frac18" log_2(1/8), by
    brackets around the product (numbers, letters, pi and Greek letters, fractions, each with a power), which
    ends at an operator or another command ("\\sin \\frac{x}{2}\\cos \\frac{x}{2}", "\\sin \\frac{x}{2} + 1"); a
    product without a fraction is left to _bare_function_arguments, a product before a bracket, "!" or "_" as it is
    ("\\cos \\frac{2}{3}(x+1)"), and "\\cos(2/3)\\pi" is cos(2/3) * pi: the bracket ends the argument."""
    pos, close = 0, None
    while m := _BARE_FUNCTION.search(s, pos):
        pos = m.end()
        close = _closing_braces(s) if close is None else close
        i = pos
        for mark in ("_", "^"):  # \log_2, \sin^2
            j = re.match(r"\s*", s[i:]).end() + i
            if s.startswith(mark, j):
                end = _argument_end(s, j + 1, close)
                if end < 0:
                    break
                i = end
        start, end, fraction = None, i, False
        while factor := _FACTOR.match(s, end):
            k = factor.end()
            if factor.group(0).strip() == "\\frac":
                k = _argument_end(s, k, close)
                k = _argument_end(s, k, close) if k >= 0 else -1
                if k < 0:
                    break
                fraction = True
            elif factor.group(0).strip().isalpha() and s.startswith("_", k):  # x_1, a_{n}
                k = _argument_end(s, k + 1, close)
                if k < 0:
                    break
            power = re.match(r"\s*\^", s[k:])
            if power:
                k = _argument_end(s, k + power.end(), close)
                if k < 0:
                    break
            start = factor.start() + len(factor.group(0)) - len(factor.group(0).lstrip()) if start is None else start
            end = k
        rest = s[end:].lstrip()
        if fraction and not rest.startswith(("(", "[", "{", "!", "_", "^")):
            s = f"{s[:start]}({s[start:end]}){s[end:]}"
            close = None
    return s


_FUNCTION_WORD = re.compile(r"\b(" + "|".join(sorted(_FUNCS, key=len, reverse=True)) + r")\b")
_POWER = re.compile(r"\s*\*\*\s*(?:\d+(?:\.\d+)?|[A-Za-z_]\w*|\([^()]*\))")
_ATOM = re.compile(r"\s*(?:\d+(?:\.\d+)?|[A-Za-z_]\w*|\([^()]*\))")


def _bare_function_arguments(s: str) -> str:
    """A function written without brackets takes the factors up to the next operator or
    function, as LaTeX means it: "sin x cos x" is sin(x)*cos(x), "sin 2x" sin(2x),
    "ln 2 * 3" ln(2)*3, "sin**2 x" sin(x)**2; sympy's implicit application would make the
    rest of the product its argument (sin(x*cos(x)))."""
    out, i = [], 0
    while m := _FUNCTION_WORD.search(s, i):
        power = _POWER.match(s, m.end())
        start = end = power.end() if power else m.end()
        while (atom := _ATOM.match(s, end)) and not _FUNCTION_WORD.fullmatch(atom.group(0).strip()):
            if atom.group(0).strip().startswith("(") and end == start:
                break  # "sin(x)", "sin (x + 1)": bracketed, as written
            end = atom.end()
            if after := _POWER.match(s, end):  # "sin x**2" is sin(x**2)
                end = after.end()
        if end == start:
            out.append(s[i:m.end()])
            i = m.end()
            continue
        exponent = s[m.end():power.end()] if power else ""
        out.append(f"{s[i:m.start()]}{m.group(1)}({s[start:end].strip()}){exponent}")
        i = end
    out.append(s[i:])
    return "".join(out)


_LETTER_CONSTANTS = {"e": "E", "i": "I"}  # Euler's number and the imaginary unit


def _log_bases(s: str) -> str:
    """\\log_b x and \\log_{b}(x) -> (log(x)/log(b)); the argument a braced or bracketed group or one token."""
    out = ""
    while (m := re.search(r"\\log\s*_\s*(\{[^{}]*\}|\w)\s*", s)):
        base, i = m.group(1).strip("{}"), m.end()
        if i < len(s) and s[i] in "({":
            depth, j = 0, i
            for j in range(i, len(s)):
                depth += s[j] in "({"
                depth -= s[j] in ")}"
                if depth == 0:
                    break
            arg, i = s[i + 1 : j], j + 1
        else:
            tok = re.match(r"\d+(?:\.\d+)?|[a-zA-Z]|\\[a-zA-Z]+", s[i:])
            arg, i = (tok.group(0), i + tok.end()) if tok else ("", i)
        out += s[: m.start()] + f"(log({arg})/log({base}))"
        s = s[i:]
    return out + s


def _abs_bars(s: str) -> str | None:
    """|x| -> Abs(x): a bar opens where an operand could start (the start, after an operator or an
    opening bracket or bar), else closes; None where the bars do not pair up."""
    if "|" not in s:
        return s
    out, depth, last = [], 0, ""  # last: the last character that is not a space, "(" for an opening bar
    for c in s:
        if c != "|":
            out.append(c)
            last = c if not c.isspace() else last
        elif not last or last in "+-*/(^,=":
            out.append("Abs(")
            depth, last = depth + 1, "("
        elif depth:
            out.append(")")
            depth, last = depth - 1, ")"
        else:
            return None
    return "".join(out) if depth == 0 else None


def _factorials(s: str) -> str | None:
    """n!, x!, 2.5!, (n+1)! -> factorial(...), n!! -> factorial2(...); None for a "!" after anything else."""
    while "!" in s:
        k = s.index("!")
        head = s[:k].rstrip()
        double = s.startswith("!", k + 1)
        if head.endswith(")"):
            depth = 0
            for j in range(len(head) - 1, -1, -1):
                depth += (head[j] == ")") - (head[j] == "(")
                if depth == 0:
                    break
            if depth:
                return None
            before = head[:j].rstrip()  # sin(x)!; but n(n-1)! is n * (n-1)!
            name = _trailing_name(before)
            j = len(before) - len(name) if name in _FUNCS else j
        else:
            m = re.search(r"(\d+(?:\.\d+)?|[A-Za-z_]\w*)$", head)  # (2.5! is no 2. * 5!)
            if not m:
                return None
            j = m.start()
        s = head[:j] + (" factorial2(" if double else " factorial(") + head[j:] + ")" + s[k + 1 + double:]
    return s


def _trailing_name(s: str) -> str:
    """The identifier s ends with ("" for none), found from the end: a regex search for
    "name$" tries every start, and a 1,000-letter word before 990 "!" took 9.5 s."""
    k = len(s)
    while k and (s[k - 1].isalnum() or s[k - 1] == "_"):
        k -= 1
    while k < len(s) and s[k].isdigit():  # (an identifier starts with no digit)
        k += 1
    return s[k:]


def _sympify(s: str):
    import sympy
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application, parse_expr, rationalize, standard_transformations)

    py = _latex_to_py(s)
    if py is None or not py.strip() or re.search(r"\d\s+\.?\d", py):
        return None  # (two numbers side by side, "5 6", are no product: implicit multiplication would make 30)
    local = {n: sympy.Symbol(n) for n in re.findall(r"[A-Za-z_]\w*", py) if n not in _FUNCS and n not in _CONST}
    local.update(E=sympy.E, pi=sympy.pi, I=sympy.I, oo=sympy.oo, ln=sympy.log, Abs=sympy.Abs)
    for g in _GREEK:
        local.setdefault(g, sympy.Symbol(g))
    try:
        e = parse_expr(py, local_dict=local, global_dict={"__builtins__": {}, **{k: getattr(sympy, k) for k in
                       ("Integer", "Float", "Rational", "Symbol", "sqrt", "log", "exp", "sin", "cos", "tan", "cot",
                        "sec", "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh", "Abs", "factorial", "factorial2",
                        "ceiling", "floor")},
                       "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan},
                       transformations=standard_transformations + (rationalize, implicit_multiplication_application),
                       evaluate=True)
    except Exception:
        return None
    return e if isinstance(e, sympy.Basic) else None


# ------------------------------------------------------------------------- comparison

def _decimal_places(lit: str):
    """(decimal places, significant digits) of a plain decimal literal, else None."""
    lit = lit.strip().lstrip("+")
    if not re.fullmatch(r"-?(\d+\.\d*|\.\d+)", lit):
        return None
    digits = lit.lstrip("-").replace(".", "").lstrip("0")
    return len(lit.split(".")[1]), len(digits)


def _round_match(lit: str, exact) -> bool:
    """The rounding rule (module docstring): lit has >= 4 significant digits and equals exact rounded (or, before
    an ellipsis, truncated)."""
    import sympy

    lit = lit.strip()
    # digits before an ellipsis that show no period are the first digits of a longer number ("3.1415…" for pi,
    # which rounds to 3.1416): truncated, as well as rounded (a recurring decimal is a fraction, matched exactly)
    cut = lit.endswith("…") and not _shown_period(lit[:-1].rpartition(".")[2])
    lit = lit[:-1] if cut else lit
    dp = _decimal_places(lit)
    if dp is None or dp[1] < 4:
        return False
    places = dp[0]
    val = sympy.Rational(lit)
    x = sympy.N(exact, 40)
    if not x.is_real:
        return False
    scaled = sympy.Rational(str(x)) * 10 ** places
    lo = sympy.floor(scaled)
    # accept the round-half-up value and, at an exact tie, either neighbour
    cand = {lo, lo + 1} if scaled - lo == sympy.Rational(1, 2) else {sympy.floor(scaled + sympy.Rational(1, 2))}
    if cut:
        cand.add(sympy.sign(scaled) * sympy.floor(abs(scaled)))  # (towards 0: "-3.1415…" is -pi)
    return any(val * 10 ** places == c for c in cand)


def _unbounded(x) -> bool:
    import sympy

    return x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)


def _num_equal(a, b) -> bool:
    import sympy

    try:
        if _unbounded(a) or _unbounded(b):
            return a == b  # oo - oo is nan and |oo| scales any tolerance: compare exactly
        if a.is_Rational and b.is_Rational:  # integers and fractions: exactly (2^64 is not 2^64 - 1)
            return a == b
        d = sympy.N(a - b, 30)
        if d.free_symbols:
            return False
        if d == 0:
            return True
        # relative (1.6e-19 is not 1.7e-19, nor 0), in sympy's floats, whose exponents do not overflow
        # (10^{400} as a Python float is inf)
        scale = max(abs(sympy.N(a, 30)), abs(sympy.N(b, 30)))
        if abs(d) <= sympy.Float(1e-25) * scale:
            return True
        # a difference whose digits all cancel ("0.e-165"): exact zeros such as (\sqrt2+1)(\sqrt2-1)-1 against a
        # gold 0, where the relative tolerance is of 0 too
        return bool(abs(d) < sympy.Float(1e-20) and sympy.simplify(a - b) == 0)
    except Exception:
        return False


def _expr_equal(a, b, rng: random.Random) -> bool:
    """Numeric check at random points; simplify(a-b) when the points do not decide."""
    import sympy

    syms = sorted(a.free_symbols | b.free_symbols, key=str)
    if not syms or _unbounded(a) or _unbounded(b):
        return _num_equal(a, b)  # (at a point where one side is oo or nan, no tolerance can tell)
    fa, fb = sympy.lambdify(syms, a, "mpmath"), sympy.lambdify(syms, b, "mpmath")
    agree = 0
    for _ in range(12):
        pt = [rng.uniform(0.5, 2.5) * rng.choice((1, 1, -1)) for _ in syms]
        try:
            va, vb = complex(fa(*pt)), complex(fb(*pt))
        except Exception:
            continue
        if not (cmath.isfinite(va) and cmath.isfinite(vb)):
            continue  # a pole of one side ("1/x" at 0): this point decides nothing
        if abs(va - vb) > 1e-9 * max(1, abs(va), abs(vb)):
            return False
        agree += 1
        if agree >= 6:
            return True
    try:
        return sympy.simplify(a - b) == 0
    except Exception:
        return False


# words after a number that hedge or negate it: "3 or 4", "3 maybe", "3 is wrong"
_HEDGE = re.compile(r"\b(?:not|no|never|or|and|except|nor|maybe|perhaps|probably|possibly|likely|unlikely|approx\w*|"
                    r"about|around|roughly|nearly|almost|guess\w*|unsure|uncertain|incorrect|wrong\w*|false)\b", re.I)
# words after a number that compute with it: "5 plus x", "2 squared", "2 thirds", "5 dozen"
_ARITHMETIC = re.compile(r"\b(?:plus|minus|times(?=\s+\S)|divided|over|multiplied|squared|cubed|sqrt|root|power|"
                         r"halves|thirds|quarters|fourths|fifths|sixths|sevenths|eighths|ninths|tenths|hundredths|"
                         r"thousandths|dozens?|score|less|more|fewer|than|recurring|repeating)\b", re.I)
_SCALE_WORDS = {"hundred": 2, "thousand": 3, "million": 6, "billion": 9, "trillion": 12}


# a number before a unit: a decimal, a fraction of whole numbers or a mixed number ("2\frac{1}{2} cups", "2 1/2 cups")
_UNIT_NUMBER = (r"-?(?:\d+\s*\\frac\s*(?:\{\d+\}|\d)\s*(?:\{\d+\}|\d)|\\frac\s*(?:\{\d+\}|\d)\s*(?:\{\d+\}|\d)"
                r"|\d+ \d+/\d+|\d+/\d+|\d+(?:\.\d+…?)?)")


def _scalar_equal(g: str, a: str, rng, gvar=None, avar=None) -> tuple[bool, str]:
    ok, why = _scalar_compare(g, a, rng, gvar, avar)
    shown = _drop_ellipses(g), _drop_ellipses(a)
    # the digits before an ellipsis, as shown ("2.718281828…" for e), where a recurring decimal shows the rounding
    # rule's 4 significant digits ("0.333…" is 1/3, which is no 0.333, as "1/3" is not)
    if not ok and shown != (g, a) and _approximation_shown(g) and _approximation_shown(a):
        ok, why_shown = _scalar_compare(*shown, rng, gvar, avar)
        if ok:
            return True, f"{why_shown} (the digits before the ellipsis)"
    return ok, why


def _scalar_compare(g: str, a: str, rng, gvar=None, avar=None) -> tuple[bool, str]:
    import sympy

    if g.lower() == a.lower():
        return True, "same text"
    # a number followed by words is a number with a unit ("7 stuffed goats", "2\frac{1}{2} cups")
    # (a word of 3+ letters that is no function or Greek letter: "2 x" stays 2*x, "2 sin x" stays;
    # "3 million" is 3 * 10^6)
    def unit_tail(x):
        m = (re.fullmatch(rf"({_UNIT_NUMBER})\s+([A-Za-z]{{3,}})[A-Za-z ]*", x)
             or re.fullmatch(rf"({_UNIT_NUMBER})\s*\(\s*([A-Za-z]{{3,}})[A-Za-z ]*\)", x))  # "12 (the sum)"
        if m and not _HEDGE.search(x) and not _ARITHMETIC.search(x) and m.group(2) not in _FUNCS | _GREEK:
            power = _SCALE_WORDS.get(m.group(2).lower())
            return m.group(1) if power is None else f"({m.group(1)}) \\cdot 10^{{{power}}}"
        return x
    g, a = unit_tail(g), unit_tail(a)
    # degrees: 30° may be compared with 30 or with pi/6
    gdeg, adeg = g.endswith("°"), a.endswith("°")
    g, a = g.rstrip("°").strip(), a.rstrip("°").strip()
    # ratio a:b of two numbers is the quotient a/b
    g, a = [re.sub(r"^([^:]+):([^:]+)$", r"(\1)/(\2)", x) if re.fullmatch(r"[-\d.\s]+:[-\d.\s/()]+", x) else x for x in (g, a)]
    gpct, apct = g.endswith("%"), a.endswith("%")
    ge, ae = _sympify(g.rstrip("%")), _sympify(a.rstrip("%"))
    if ge is None or ae is None:
        # text answers ("no solution", letters) compare as normalised text
        def squeezed(text):  # (white space between two digits stays: "5 6" is no 56)
            return re.sub(r"(?<!\d)\s+|\s+(?!\d)|[()]", "", text.lower())

        ok = squeezed(g) == squeezed(a)
        return ok, ("same text" if ok else f"cannot parse {'gold' if ge is None else 'answer'}; texts differ")
    # a function's variable is the answer's to name: f(z)=2z vs f(x)=2x, or vs a plain 2x
    if avar and not gvar and len(ge.free_symbols) == 1:
        gvar = str(next(iter(ge.free_symbols)))
    if gvar and not avar and len(ae.free_symbols) == 1:
        avar = str(next(iter(ae.free_symbols)))
    if avar and gvar and avar != gvar:
        ae = ae.subs(sympy.Symbol(avar), sympy.Symbol(gvar))
    # an integer parameter's name is arbitrary: "k pi" vs "n pi" (only these conventional names)
    params = {"k", "n", "m", "t", "j"}
    gs, as_ = ge.free_symbols, ae.free_symbols
    if len(gs) == 1 and len(as_) == 1 and gs != as_ and {str(x) for x in gs | as_} <= params:
        ae = ae.subs(next(iter(as_)), next(iter(gs)))
    # percentages: "50%" may mean 50 or 0.5, but two percentages compare as written (50% is not 0.5%);
    # degrees likewise
    if gpct and apct:
        gpct = apct = False
    if gdeg and adeg:
        gdeg = adeg = False
    # (each reading: the value and the factor it is of the number as written, for the rounding rule)
    percent, degree = sympy.Rational(1, 100), sympy.pi / 180

    def readings(value, pct, deg):
        return [(value, 1)] + ([(value * percent, percent)] if pct else []) + ([(value * degree, degree)] if deg else [])

    for gv, gfactor in readings(ge, gpct, gdeg):
        for av, afactor in readings(ae, apct, adeg):
            if {gfactor, afactor} == {percent, degree}:
                continue  # a percentage is no angle
            if gv.free_symbols or av.free_symbols:
                if _expr_equal(gv, av, rng):
                    return True, "expressions agree"
                continue
            if _num_equal(gv, av):
                return True, "values equal"
            # (rounded as written for a percentage only, and not against another unit's reading: 52.36% is
            # no 30 degrees, 38.20 degrees no 2/3)
            if degree not in (gfactor, afactor) and (_round_match(a.rstrip("%"), gv / afactor)
                                                    or _round_match(g.rstrip("%"), av / gfactor)):
                return True, "equal after rounding (>= 4 significant digits)"
    return False, f"{_short(ge)} != {_short(ae)}"


def _short(x, most: int = 60) -> str:
    """x as text for a reason string, cut short (a verdict on 9^{999} need not print its 1000 digits)."""
    t = str(x)
    return t if len(t) <= most else t[: most - 3] + "..."


def _is_interval(s: str) -> bool:
    return len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and len(_split_top(s[1:-1])) == 2


def _element_equal(g: str, a: str, rng) -> tuple[bool, str]:
    g, a = _matrix_to_tuple(g), _matrix_to_tuple(a)
    g, a = _ineq_to_interval(g), _ineq_to_interval(a)
    g2, gvar = _strip_label(g)
    a2, avar = _strip_label(a)
    if "=" in g and "=" in a and not (gvar and avar):
        g2, a2 = g, a  # both equations ("y = 2x+1" vs "2x - y + 1 = 0"): compare solution sets
    # equations (not a plain label): same solution set
    if "=" in g2 and "=" not in a2 and g2.count("=") == 1:
        # gold "x y = 6", answer "6/x": the answer is the solved-for variable, when the gold
        # has exactly one symbol the answer lacks and solving for it gives one solution
        import sympy
        gl, gr = g2.split("=")
        ge, ae = _sympify(f"({gl})-({gr})"), _sympify(a2)
        if ge is not None and ae is not None and ge != 0:
            missing = ge.free_symbols - ae.free_symbols
            if len(missing) == 1:
                sols = sympy.solve(ge, next(iter(missing)))
                if len(sols) == 1 and _expr_equal(sols[0], ae, rng):
                    return True, "the answer solves the gold equation for its variable"
        return False, "equation vs non-equation"
    if "=" in g2 or "=" in a2:
        if not ("=" in g2 and "=" in a2) or g2.count("=") != 1 or a2.count("=") != 1:
            return False, "equation vs non-equation"
        gl, gr = g2.split("=")
        al, ar = a2.split("=")
        ge, ae = _sympify(f"({gl})-({gr})"), _sympify(f"({al})-({ar})")
        if ge is None or ae is None or ae == 0 or ge == 0:
            return False, "cannot parse equation"
        import sympy
        ratio = sympy.simplify(ge / ae)
        if ratio.free_symbols or ratio == 0:
            return _expr_equal(ge, ae, rng) or _expr_equal(ge, -ae, rng), "equations compared"
        return True, "equations have the same solution set"
    g, a = g2, a2
    # a one-element set {1} is its element
    g, a = [x[2:-2].strip() if re.fullmatch(r"\\\{[^,{}]*\\\}", x) else x for x in (g, a)]
    # inequality chains with the same operators ("a > b > c"): compare piecewise, in order
    gp, ap = _INEQ.split(g), _INEQ.split(a)
    if len(gp) >= 3 and len(gp) == len(ap) and not _is_interval(g) and not _is_interval(a):
        norm = lambda o: {"\\leq": "<=", "\\geq": ">=", "\\lt": "<", "\\gt": ">"}.get(o, o)
        if [norm(o) for o in gp[1::2]] != [norm(o) for o in ap[1::2]]:
            return False, "inequality chains differ"
        return _seq_equal(gp[0::2], ap[0::2], rng, ordered=True)
    if _is_interval(g) or _is_interval(a):
        if not (_is_interval(g) and _is_interval(a)):
            return False, "interval vs non-interval"
        if g[0] != a[0] or g[-1] != a[-1]:
            return False, "interval ends differ (open/closed)"
        return _seq_equal(_split_top(g[1:-1]), _split_top(a[1:-1]), rng, ordered=True)
    for o, c, ordered in (("\\{", "\\}", False), ("(", ")", True), ("[", "]", True)):
        gi, ai = g.startswith(o) and g.endswith(c), a.startswith(o) and a.endswith(c)
        if gi and ai and (len(_split_top(g[len(o):-len(c)])) > 1 or len(_split_top(a[len(o):-len(c)])) > 1):
            return _seq_equal(_split_top(g[len(o):-len(c)]), _split_top(a[len(o):-len(c)]), rng, ordered)
    return _scalar_equal(g, a, rng, gvar, avar)


def _seq_equal(gs, as_, rng, ordered) -> tuple[bool, str]:
    if len(gs) != len(as_):
        return False, f"{len(as_)} elements where the gold has {len(gs)}"
    if ordered:
        for x, y in zip(gs, as_):
            ok, why = _element_equal(x, y, rng)
            if not ok:
                return False, f"element {y!r} vs {x!r}: {why}"
        return True, "all elements equal in order"
    left = list(as_)
    for x in gs:  # greedy multiset matching
        for k, y in enumerate(left):
            if _element_equal(x, y, rng)[0]:
                del left[k]
                break
        else:
            return False, f"gold element {x!r} has no match"
    return True, "same elements (unordered)"


def _screen(gold: str, answer: str) -> str | None:
    """Cheap hacking screen on the caller's side; a reason string rejects."""
    if answer is None or not str(answer).strip():
        return "empty answer"
    if len(answer) > _MAX_LEN:
        return "answer too long"
    if len({_canon(b) for b in _boxed_all(answer)}) > 1:
        return "several different boxed answers"
    body = _normalise(answer)
    if not re.search(r"[A-Za-z0-9]", body) or body in ("", "{}"):
        return "no content"
    if _INJECTION.search(answer) and not _INJECTION.search(gold):
        return "prompt injection / self-grading text"
    if _UNEVALUATED.search(answer) and not _UNEVALUATED.search(gold):
        return "unevaluated restatement"
    return None


def _unwrap_set(s: str) -> str:
    """A listed set \\{a, b\\} is an unordered list, like the bare list "a, b"."""
    if s.startswith("\\{") and s.endswith("\\}") and "|" not in s and "\\mid" not in s:
        inner = s[2:-2]
        depth = 0  # only when the outer braces enclose everything
        for k in range(len(inner) - 1):
            if inner[k : k + 2] == "\\{":
                depth += 1
            elif inner[k : k + 2] == "\\}":
                depth -= 1
                if depth < 0:
                    return s
        return inner.strip()
    return s


def _check(gold: str, answer: str) -> tuple[bool, str]:
    """The full check (runs in a worker)."""
    why = _screen(gold, answer)
    if why:
        return False, why
    g, a = _normalise(gold), _normalise(answer)
    if g == a:
        return True, "identical after normalisation"
    rng = random.Random(0)  # deterministic verdicts
    # whole-answer structures first (a single tuple/interval/set/matrix/equation)
    g_set, a_set = _unwrap_set(g) != g, _unwrap_set(a) != a
    g, a = _unwrap_set(g), _unwrap_set(a)
    gc, ac = _candidates(g), _candidates(a)
    # a single tuple against a bare list of the same length (not a set: \{1, 2\} is no pair): compare in order
    for x, y, x_set in ((gc, ac, g_set), (ac, gc, a_set)):
        if not x_set and len(x) > 1 and len(y) == 1 and y[0][:1] == "(" and y[0][-1:] == ")" and len(_split_top(y[0][1:-1])) == len(x):
            return _seq_equal(gc if x is gc else _split_top(gc[0][1:-1]), ac if x is ac else _split_top(ac[0][1:-1]),
                              rng, ordered=True)
    if len(gc) == 1 and len(ac) > 1:
        # "x = 1, 2" style lists vs a one-element gold: more candidates than the gold
        return False, f"{len(ac)} candidates where the gold has 1"
    if len(gc) != len(ac):
        return False, f"{len(ac)} candidates where the gold has {len(gc)}"
    if len(gc) == 1:
        return _element_equal(gc[0], ac[0], rng)
    # several: a bare list compares unordered
    return _seq_equal(gc, ac, rng, ordered=False)


# ------------------------------------------------------------------------- worker pool


def _verdict(gold: str, answer: str) -> tuple[bool, str]:
    """_check, where a crash is a rejection, never an error for the trainer."""
    try:
        return _check(gold, answer)
    except Exception as exc:
        return False, f"error: {type(exc).__name__}"


def _worker_main(conn):
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the caller decides what it means (a forked
    # worker would run the caller's handler, e.g. the trainer's "interrupted" message, once more per worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        try:
            conn.send(_verdict(*msg))
        except (EOFError, OSError):
            return


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def kill(self):
        try:
            self.proc.kill()
            self.proc.join(1)
        except Exception:
            pass
        self.conn.close()


class _Pool:
    """Worker processes; a task past its deadline gets its worker killed and replaced."""

    def __init__(self):
        self.pid = os.getpid()  # a forked child starts a pool of its own (its parent's workers are not its children)
        # fork: workers start in milliseconds and inherit the imported sympy; they run
        # only pure-Python code, so the usual fork-with-threads hazards do not apply.
        method = os.environ.get("FASTRL_VERIFY_START_METHOD", "fork" if os.name == "posix" else "spawn")
        self.ctx = mp.get_context(method)
        self.idle: list[_Worker] = []
        self.lock = threading.Lock()

    def _get(self) -> _Worker:
        with self.lock:
            while self.idle:
                w = self.idle.pop()
                if w.proc.is_alive():
                    return w
                w.kill()
        return _Worker(self.ctx)

    def _put(self, w: _Worker):
        with self.lock:
            self.idle.append(w)

    def run(self, pairs, timeout: float, workers: int) -> list[tuple[bool, str]]:
        results: list = [None] * len(pairs)
        todo = list(range(len(pairs)))[::-1]
        busy: dict = {}  # conn -> (worker, index, deadline)
        try:
            while todo or busy:
                while todo and len(busy) < workers:
                    k = todo.pop()
                    w = self._get()
                    try:
                        w.conn.send(pairs[k])
                    except (OSError, EOFError):
                        w.kill()
                        todo.append(k)
                        continue
                    busy[w.conn] = (w, k, time.monotonic() + timeout)
                now = time.monotonic()
                first = min(d for _, _, d in busy.values())
                for conn in _mp_wait(list(busy), timeout=max(0.0, first - now)):
                    w, k, _ = busy.pop(conn)
                    try:
                        results[k] = conn.recv()
                        self._put(w)
                    except (EOFError, OSError):  # the worker died (e.g. out of memory)
                        results[k] = (False, "worker died")
                        w.kill()
                now = time.monotonic()
                for conn, (w, k, d) in list(busy.items()):
                    if now >= d:
                        del busy[conn]
                        results[k] = (False, f"timeout after {timeout:g}s")
                        w.kill()  # a hung check never blocks the caller
        finally:
            for w, _, _ in busy.values():
                w.kill()
        return results

    def close(self):
        with self.lock:
            for w in self.idle:
                try:
                    w.conn.send(None)
                except Exception:
                    pass
                w.kill()
            self.idle = []


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            # imported before forking so workers start warm, and so a fork taken while
            # another thread holds the import lock cannot leave a child stuck importing
            import sympy  # noqa: F401
            import sympy.parsing.sympy_parser  # noqa: F401

            _POOL = _Pool()
            atexit.register(_POOL.close)
        return _POOL


def _gold_text(gold) -> str:
    """The gold as text: a str or a finite real number (numpy's, Fraction and Decimal too); a
    GSM8K solution ("... #### 72") is its final answer."""
    if isinstance(gold, str):
        return gold.rpartition("####")[2].strip() if "####" in gold else gold
    if isinstance(gold, bool) or not isinstance(gold, (numbers.Real, decimal.Decimal)):
        raise TypeError(f"gold must be a str or a number, got {type(gold).__name__}: {_short(repr(gold))}")
    if isinstance(gold, numbers.Integral):
        return str(int(gold))
    if isinstance(gold, numbers.Rational):  # (Fraction, sympy's Rational): "1/3"
        return str(fractions.Fraction(int(gold.numerator), int(gold.denominator)))
    finite = gold.is_finite() if isinstance(gold, decimal.Decimal) else cmath.isfinite(float(gold))
    if not finite:  # (a missing value in a table: NaN would match "\text{NaN}")
        raise ValueError(f"gold must be a finite number, got {gold!r}")
    if isinstance(gold, decimal.Decimal):
        return format(gold, "f")  # (exact, as written)
    # a binary float is its value to the digits its type holds (15, numpy's float32 6), as a decimal
    # (the rounding rule matches: 2/3 stored as 0.6666666666666666 is no exact 2/3, but rounds to it),
    # or a whole number it holds exactly, with all its digits
    import numpy as np

    info = np.finfo(gold.dtype if hasattr(gold, "dtype") else np.float64)
    value = float(gold)
    if value.is_integer() and abs(value) <= 2.0 ** (info.nmant + 1):  # every whole number up to here is exact
        return str(int(value))  # (float32's 6 digits made 1234567 "1234570")
    return format(decimal.Decimal(format(value, f".{info.precision}g")), "f")


def _run(golds, answers, workers, timeout) -> list[tuple[bool, str]]:
    timeout = DEFAULT_TIMEOUT if timeout is None else _seconds("timeout", timeout)
    golds = [_gold_text(g) for g in golds]  # every gold checked before any work starts
    out: list = [None] * len(golds)
    pending = []
    for k, (g, a) in enumerate(zip(golds, answers)):
        a = "" if a is None else str(a)
        why = _screen(g, a)
        if why:
            out[k] = (False, why)
        elif _normalise(g) == _normalise(a):  # fast path: no sympy, no worker
            out[k] = (True, "identical after normalisation")
        else:
            pending.append((k, g, a))
    if pending:
        n = workers or min(len(pending), os.cpu_count() or 1)
        checks = [(g, a) for _, g, a in pending]
        # a daemonic process (a multiprocessing.Pool or DataLoader worker) may not start processes
        res = _run_here(checks, timeout) if mp.current_process().daemon else _pool().run(checks, timeout, max(1, n))
        for (k, _, _), r in zip(pending, res):
            out[k] = r
    return out


class _Timeout(BaseException):  # not an Exception: _verdict must not take it for a crash
    pass


def _run_here(pairs, timeout: float) -> list[tuple[bool, str]]:
    """The checks in this process, each stopped by SIGALRM after ``timeout`` where signals can be
    used (the main thread, POSIX); elsewhere without a time limit."""
    import signal

    def alarm(*_):
        raise _Timeout

    timed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    out = []
    for gold, answer in pairs:
        previous = signal.signal(signal.SIGALRM, alarm) if timed else None
        try:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, timeout)
            out.append(_verdict(gold, answer))
        except _Timeout:
            out.append((False, f"timeout after {timeout:g}s"))
        finally:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
    return out


# ------------------------------------------------------------------------- public API


def verify(gold: str, answer: str, *, timeout: float | None = None) -> bool:
    """True iff the bare answer is equivalent to the gold (within ``timeout`` seconds)."""
    return bool(_run([gold], [answer], 1, timeout)[0][0])


def explain(gold: str, answer: str, *, timeout: float | None = None) -> str:
    """The verdict and the reason for it, e.g. "rejected: 2 candidates where the gold has 1"."""
    ok, why = _run([gold], [answer], 1, timeout)[0]
    return ("accepted: " if ok else "rejected: ") + why


def score(gold: str, completion: str, *, timeout: float | None = None) -> float:
    """1.0 iff the completion's extracted answer verifies against gold, else 0.0."""
    return score_batch([gold], [completion], 1, timeout=timeout)[0]


def verify_batch(golds, answers, workers: int | None = None, *, timeout: float | None = None) -> list[bool]:
    """``[verify(g, a) for g, a in zip(golds, answers)]`` in parallel on the warm pool."""
    golds, answers = list(golds), list(answers)
    if len(golds) != len(answers):
        raise ValueError(f"{len(golds)} golds but {len(answers)} answers")
    return [bool(r[0]) for r in _run(golds, answers, workers, timeout)]


def score_batch(golds, completions, workers: int | None = None, *, timeout: float | None = None) -> list[float]:
    """``[score(g, c) for g, c in zip(golds, completions)]`` in parallel on the warm pool."""
    golds, completions = list(golds), list(completions)
    if len(golds) != len(completions):
        raise ValueError(f"{len(golds)} golds but {len(completions)} completions")
    answers = [extract_answer(c) for c in completions]  # None (no answer) is screened out as empty
    return [float(ok) for ok in verify_batch(golds, answers, workers, timeout=timeout)]
