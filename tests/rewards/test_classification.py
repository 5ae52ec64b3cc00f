import time

import pytest

from fastrl.rewards.classification import accuracy_reward, format_reward, normalize, reward

LABELS = ["cat", "dog", "golden retriever"]


@pytest.mark.parametrize("completion,expected", [
    ("<think>fur, whiskers</think><answer>cat</answer>", 1.0),
    ("  <think>\nfur\n</think>\n\n<answer> cat </answer>\n", 1.0),
    ("<think></think><answer>cat</answer>", 1.0),
    ("<answer>cat</answer>", 0.0),  # missing think
    ("<think>fur</think>", 0.0),  # missing answer
    ("<think>fur</think>cat", 0.0),
    ("<think>fur<answer>cat</answer>", 0.0),  # unclosed think
    ("<answer>cat</answer><think>fur</think>", 0.0),  # wrong order
    ("Sure! <think>fur</think><answer>cat</answer>", 0.0),  # text before
    ("<think>fur</think><answer>cat</answer> I hope that helps", 0.0),  # text after
    ("<think>fur</think> so <answer>cat</answer>", 0.0),  # text between
    ("<think>a<think>b</think></think><answer>cat</answer>", 0.0),  # nested think
    ("<think>a</think><answer><answer>cat</answer></answer>", 0.0),  # nested answer
    ("<think>a</think><think>b</think><answer>cat</answer>", 0.0),  # two thinks
    ("<think>a</think><answer>cat</answer><answer>dog</answer>", 0.0),  # two answers
    ("cat", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


@pytest.mark.parametrize("completion", [
    "<think>a</think>" + "<answer></think>" * 6000,  # the regex's backtracking took 2.2 s on this
    "<think>" + "</think>" * 13000,
    "<think>x</think><answer>" + "</answer> x" * 10000,
])
def test_format_reward_linear_on_repeated_tags(completion):
    t = time.monotonic()
    assert format_reward(completion) == 0.0
    assert time.monotonic() - t < 0.5


@pytest.mark.parametrize("answer,gold,expected", [
    ("cat", "cat", 1.0),
    ("Cat", "cat", 1.0),
    ("  CAT\n", "cat", 1.0),
    ("cat.", "cat", 1.0),
    ('"cat"!', "cat", 1.0),
    ("(cat)", "cat", 1.0),
    ("\\text{cat}", "cat", 1.0),
    ("$\\mathrm{Cat}$", "cat", 1.0),
    ("\\boxed{\\text{dog}}", "dog", 1.0),
    ("golden   Retriever", "golden retriever", 1.0),
    ("golden\nretriever.", "Golden Retriever", 1.0),
    ("dog", "cat", 0.0),  # wrong class
    ("not cat", "cat", 0.0),
    ("cat or dog", "cat", 0.0),
    ("cat, dog", "cat", 0.0),
    ("cat dog", "cat", 0.0),
    ("it is a cat", "cat", 0.0),  # must name the class, not mention it
    ("retriever", "golden retriever", 0.0),
    ("cats", "cat", 0.0),
    ("", "cat", 0.0),
    ("bird", "cat", 0.0),  # outside the label set
])
def test_accuracy_in_answer_tags(answer, gold, expected):
    completion = f"<think>looking</think><answer>{answer}</answer>"
    assert accuracy_reward(completion, gold, LABELS) == expected


def test_accuracy_without_tags_uses_whole_completion():
    assert accuracy_reward(" Cat. ", "cat", LABELS) == 1.0
    assert accuracy_reward("I think cat", "cat", LABELS) == 0.0


def test_accuracy_ambiguous_answer_blocks():
    assert accuracy_reward("<answer>dog</answer><answer>cat</answer>", "cat", LABELS) == 0.0
    assert accuracy_reward("<answer>cat", "cat", LABELS) == 0.0
    # another spelling of the tag (as format_reward counts tags) makes a second block
    assert accuracy_reward("<answer>cat</answer><ANSWER>dog</ANSWER>", "cat", LABELS) == 0.0
    assert accuracy_reward("<answer>cat</answer><answer >dog</answer >", "cat", LABELS) == 0.0
    assert accuracy_reward("</answer>cat<answer>", "cat", LABELS) == 0.0
    # the think block may mention other classes; only the answer counts
    assert accuracy_reward("<think>dog? no.</think><answer>cat</answer>", "cat", LABELS) == 1.0


def test_reward_variants():
    good = "<think>whiskers</think><answer>cat</answer>"
    assert reward(good, "cat", LABELS) == 2.0
    assert reward(good, "dog", LABELS) == 1.0
    assert reward("<answer>cat</answer>", "cat", LABELS) == 1.0  # accuracy only, bad format
    assert reward(good, "cat", LABELS, thinking=False) == 1.0
    assert reward("cat", "cat", LABELS, thinking=False) == 1.0
    assert reward("not cat", "cat", LABELS, thinking=False) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="not in the label set"):
        accuracy_reward("cat", "bird", LABELS)
    with pytest.raises(ValueError, match="empty"):
        accuracy_reward("cat", "cat", [])
    with pytest.raises(TypeError, match="not a single str"):
        accuracy_reward("cat", "cat", "cat")
    with pytest.raises(TypeError, match="labels must be a collection of class names, got NoneType"):
        accuracy_reward("cat", "cat", None)
    with pytest.raises(ValueError, match="same after normalisation"):
        accuracy_reward("cat", "cat", ["cat", "Cat."])
    with pytest.raises(TypeError, match="completion"):
        format_reward(None)


def test_gold_is_normalised_too():
    assert accuracy_reward("<answer>cat</answer>", "\\text{Cat}", LABELS) == 1.0
    assert normalize("  \\text{\\mathrm{Big  Cat}} ;") == "big cat"


@pytest.mark.parametrize("answer", ["“cat”", "cat。", "«cat»", "cat…", "‘cat’", "¿cat?", "「cat」"])
def test_punctuation_of_any_script_is_stripped(answer):
    assert normalize(answer) == "cat"  # (ASCII punctuation only before: each scored 0)
    assert accuracy_reward(f"<answer>{answer}</answer>", "cat", LABELS) == 1.0


@pytest.mark.parametrize("labels, answer, gold, expected", [
    (["-1", "0", "1"], "-1", "-1", 1.0), (["-1", "0", "1"], "(-1).", "-1", 1.0), (["-1", "0", "1"], "1", "-1", 0.0),
    (["-1", "0", "1"], "+1", "1", 0.0), (["-1", "0", "1"], "*1*", "1", 1.0), (["-1", "0", "1"], "**-1**", "-1", 1.0),
    (["C++", "C", "C#"], "c++", "C++", 1.0), (["C++", "C", "C#"], "C", "C++", 0.0), (["C++", "C", "C#"], "C#.", "C#", 1.0),
    (["cat", "dog"], "*cat*", "cat", 1.0), (["cat", "dog"], "_cat_", "cat", 1.0),  # markdown emphasis goes
    # a sign is kept whatever the label set: with no "-1" among the labels, "-1" was read as "1" (a sign-flipped
    # answer scored the full reward), "C" as "C++", "-positive" as "positive"
    (["0", "1"], "-1", "1", 0.0), (["0", "1"], "+1", "1", 0.0), (["-1", "0"], "1", "-1", 0.0),
    (["C++", "Java"], "C", "C++", 0.0), (["C#", "Java"], "C", "C#", 0.0), (["positive", "negative"], "-positive",
                                                                           "positive", 0.0),
    (["café", "tea"], "Cafe\u0301", "café", 1.0), (["cat", "dog"], "ｃａｔ", "cat", 1.0),
    (["straße", "weg"], "STRASSE", "straße", 1.0),
])
def test_labels_that_differ_by_a_sign(labels, answer, gold, expected):
    """Labels such as -1/0/1 or C++/C were refused as 'the same after normalisation'; Unicode
    forms of one word (composed or not, full-width, case-folded) are one."""
    assert accuracy_reward(f"<answer>{answer}</answer>", gold, labels) == expected


@pytest.mark.parametrize("completion", ["<answer>" * 12500, "<answer>x" * 11111, "<think></think><answer>" * 4347,
                                        "<answer>" + "\\text{" * 16666 + "cat" + "}" * 16666 + "</answer>"])
def test_long_adversarial_completions_are_read_in_linear_time(completion):
    """Each unclosed <answer> was searched to the end (4.5 s at 100 kB), and wrappers were
    unwrapped a level per pass (11 s for 16,666 levels)."""
    import time

    start = time.monotonic()
    score = reward(completion, "cat", LABELS)
    assert time.monotonic() - start < 1.0 and score == (1.0 if completion.count("cat") else 0.0)


def test_nested_wrappers_and_braces():
    assert normalize("\\text{\\mathrm{Big  Cat}}") == "big cat" and normalize("\\textbf{a{b}c}") == "a{b}c"
    assert normalize("\\text{cat} \\text{dog}") == "cat dog" and normalize("\\text{cat") == "cat"
