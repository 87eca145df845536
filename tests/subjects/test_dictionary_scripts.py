"""The scripts that make and choose the default dictionary: scripts/train_sae.py (text sources, row
budget, stored activations) and scripts/dictionary_screen.py (the judge-free tokens-label proxy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.scripts import load_script

from autointerp.records import Example, LatentId, LatentRecord, LatentStats

train_sae = load_script("train_sae")
screen = load_script("dictionary_screen")


def _example(tokens: list[str], acts: list[float], quantile: int = -1) -> Example:
    return Example(window=0, tokens=list(range(len(tokens))), str_tokens=tokens, activations=acts, quantile=quantile)


# ---------------------------------------------------------------------------------------- train_sae.py


def test_select_rows_keeps_lee_whole_and_passes_unused_budget_on():
    rows = {
        "big_a": np.full((50, 4), 2, np.int64),
        "big_b": np.full((50, 4), 3, np.int64),
        "tiny": np.ones((2, 4), np.int64),
        "lee_background": np.zeros((5, 4), np.int64),
    }
    chosen = train_sae.select_rows(rows, 25, np.random.default_rng(0))
    assert len(chosen["lee_background"]) == 5
    assert len(chosen["tiny"]) == 2  # fewer rows than its share (20 // 3): all of them
    assert len(chosen["big_a"]) + len(chosen["big_b"]) == 18  # the rest of the budget, shared
    assert abs(len(chosen["big_a"]) - len(chosen["big_b"])) <= 1


def test_rst_prose_keeps_paragraphs_and_drops_code_and_directives(tmp_path):
    (tmp_path / "doc.rst.txt").write_text(
        "Title\n=====\n\n"
        "The :keyword:`while` statement loops as long as the ``condition`` stays true, and more.\n\n"
        ".. note::\n   A directive body that is not prose at all, however long it may be.\n\n"
        "   >>> while True: print('an indented code block of several words here')\n\n"
        "short one\n"
    )
    (doc,) = train_sae.read_rst_prose(tmp_path)
    assert doc == "The while statement loops as long as the condition stays true, and more."


def test_html_prose_skips_code(tmp_path):
    page = tmp_path / "p.html"
    page.write_text(
        "<html><head><style>p {color: red}</style></head><body><h1>Head</h1>"
        "<p>The package manager installs software from the archive for every user.</p>"
        "<pre>apt-get install something with many many arguments here now</pre></body></html>"
    )
    assert train_sae.read_html_prose([page]) == [
        "The package manager installs software from the archive for every user."
    ]


def test_stored_activations_are_reused_not_gathered_again(tmp_path):
    calls = []

    def fill(out):
        calls.append(sorted(out))
        for layer, t in out.items():
            t[:] = float(layer)

    first, seconds = train_sae.stored_activations(tmp_path, "key", [2, 5], 5, (6, 3), fill)
    assert calls == [[2, 5]] and first.dtype == torch.float16 and (first == 5).all()
    again, seconds_again = train_sae.stored_activations(tmp_path, "key", [2], 2, (6, 3), fill)
    assert calls == [[2, 5]]  # layer 2 was stored by the first pass
    assert seconds_again == 0.0 and (again == 2).all()
    (tmp_path / "key" / "complete").unlink()  # an interrupted gather is not trusted
    train_sae.stored_activations(tmp_path, "key", [2], 2, (6, 3), fill)
    assert calls == [[2, 5], [2]]


# ---------------------------------------------------------------------------------- dictionary_screen.py


def test_tokens_label_counts_only_strongly_marked_tokens_normalised():
    train = [
        _example([" Also", " the", " cat"], [5.0, 1.0, 0.0]),  # " the" is below 0.3 x 5
        _example(["also", " still", "."], [2.0, 1.0, 0.0]),
    ]
    label = screen.tokens_label(train, 0.3, 5)
    assert label == {"also": pytest.approx(2 / 3), "still": pytest.approx(1 / 3)}


def test_proxy_separates_a_token_latent_and_reports_per_quantile_recall():
    train = [_example([" also", " x"], [3.0, 0.0]) for _ in range(4)]
    test = [
        _example([" a", " also"], [0.0, 1.0], quantile=0),
        _example([" b", " c"], [0.5, 0.0], quantile=0),  # a weak activation on no label token
        _example([" also", " d"], [4.0, 0.0], quantile=1),
        _example([" also", " e"], [5.0, 0.0], quantile=1),
    ]
    negatives = [_example([" f", " g"], [0.0, 0.0]) for _ in range(4)]
    record = LatentRecord(
        latent=LatentId("layers.3", 7),
        stats=LatentStats(n_tokens=100, fire_tokens=4, fire_windows=4, max_activation=5.0),
        train=train,
        test=test,
        negatives=negatives,
    )
    r = screen.latent_proxy(record, 0.3, 5, 2)
    assert r["label"] == ["also"]
    assert r["recall_by_quantile"] == [0.5, 1.0]
    assert r["tpr"] == 0.75 and r["fpr"] == 0.0
    assert r["balanced_accuracy"] == pytest.approx(0.875)
    assert r["auroc"] == pytest.approx(0.875)
