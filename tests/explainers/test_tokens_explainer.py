"""`--explainer tokens`: a label from the recurring strongly-activating tokens, with no LLM."""

from __future__ import annotations

import pytest

from autointerp.explainers import (
    TOKENS_EXPLAINER,
    ExplainerSettings,
    ExplanationFailed,
    explain_by_tokens,
    marked_tokens,
    tokens_label,
)
from autointerp.prompting import readable_token
from autointerp.records import Example, LatentId, LatentRecord, LatentStats


def _example(window: int, tokens: list[str], strong: set[int], weak: set[int] = frozenset()) -> Example:
    """Tokens at `strong` positions activate 1.0 (marked); at `weak` ones 0.2 (below 0.3 of the max: unmarked)."""
    acts = [1.0 if i in strong else 0.2 if i in weak else 0.0 for i in range(len(tokens))]
    return Example(window, list(range(len(tokens))), tokens, acts, quantile=0)


def _record(train: list[Example]) -> LatentRecord:
    return LatentRecord(LatentId("layers.1", 3), LatentStats(1000, 50, 20, 1.0), train=train)


def test_recurring_tokens_most_frequent_first_with_case_and_space_variants_merged():
    train = [
        _example(1, ["I", " also", " went"], {1}),
        _example(2, ["Also", ",", " we"], {0}, weak={2}),  # " we" is active but too weakly to be marked
        _example(3, ["and", " also", " still"], {1, 2}),
        _example(4, ["x", " still", " also"], {1, 2}),
        _example(5, ["while", " y", " we"], {0}, weak={2}),
        _example(6, [" While", " z", " we"], {0}, weak={2}),
        _example(7, ["once", " only", "."], {1}),  # " only" is marked in one example: not the latent's
    ]
    counted = {t.text: (t.examples, t.marks) for t in marked_tokens(train, 0.3)}
    assert counted["also"] == (4, 4)  # " also" x3 and "Also" x1 are one token, shown in its most common form
    assert counted["still"] == (2, 2) and counted["while"] == (2, 2) and counted["only"] == (1, 1)
    assert "we" not in counted
    assert tokens_label(_record(train)) == 'the tokens "also", "still", "while"'
    # a token marked in one example only is left out, and at most tokens_max are named
    assert tokens_label(_record(train), ExplainerSettings(tokens_max=1)) == 'the token "also"'
    assert "only" not in tokens_label(_record(train), ExplainerSettings(tokens_max=10))
    assert tokens_label(_record(train), ExplainerSettings(tokens_min_examples=1, tokens_max=10)).endswith('"only"')


def test_ties_go_to_more_marks_then_alphabetical_and_the_lower_case_form():
    train = [
        _example(1, ["b", "b", "a"], {0, 1, 2}),
        _example(2, ["B", "a", "c"], {0, 1, 2}),
        _example(3, ["c", "x"], {0}),
    ]
    ranked = marked_tokens(train, 0.3)
    assert [(t.text, t.examples, t.marks) for t in ranked] == [("b", 2, 3), ("a", 2, 2), ("c", 2, 2)]


def test_invisible_tokens_are_shown_readably_and_quotes_do_not_clash():
    train = [_example(i, ["a", "\n", '"', " ", "\u200b"], {1, 2, 3, 4}) for i in range(3)]
    label = tokens_label(_record(train), ExplainerSettings(tokens_max=5))
    assert label == 'the tokens \'"\', "\\u200b", "↵", "␣"'  # a quote mark in single quotes
    assert readable_token(" \n") == "↵" and readable_token("\t") == "⇥" and readable_token(" <b>") == "‹b›"
    assert readable_token("\u200b") == "\\u200b"
    assert "\n" not in label and "<" not in label


def test_no_recurring_token_is_a_failure_that_names_the_closest_one():
    train = [_example(i, ["x", f" w{i}", f" v{i}"], {1}) for i in range(5)] + [_example(9, ["a", " w0"], {1})]
    with pytest.raises(ExplanationFailed) as failed:
        tokens_label(_record(train), ExplainerSettings(tokens_min_examples=3))
    message = str(failed.value)
    assert "no strongly-activating token" in message and '"w0", is marked in 2 of 6' in message
    with pytest.raises(ExplanationFailed, match="no training examples"):
        tokens_label(_record([]))


def test_the_explanation_records_its_counts_and_asks_no_model():
    train = [_example(i, ["the", " cat", " sat"], {1}) for i in range(4)]
    explanation = explain_by_tokens(_record(train))
    assert explanation.text == 'the token "cat"' and explanation.model == TOKENS_EXPLAINER
    assert explanation.usage.calls == 0 and '"cat" in 4 examples (4 marks)' in explanation.raw
