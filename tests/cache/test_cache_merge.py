"""Caches of consecutive parts of a corpus (what Ray's cache shards write), merged, equal the cache of one
pass over it: files, counts, top windows and samples, value for value; also when windows tie."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
from helpers.checkpoint_fixtures import write_sae_run
from helpers.tiny_subjects import cache_meta, make_tiny_llama, token_rows

from autointerp.cache.build import CacheSettings, build_caches, keep_best
from autointerp.cache.merge import merge_caches
from autointerp.cache.store import FILES, INDEX, CacheError, LatentState, hookpoint_folders, read_meta
from autointerp.subjects.attach import open_dictionary

CTX, WIN, ROWS = 64, 16, 20
SETTINGS = CacheSettings(ctx_len=CTX, window_len=WIN, top_k=6, sample_size=8, batch_rows=4, checkpoint_rows=8)


@pytest.fixture(scope="module")
def llama():
    return make_tiny_llama(layers=2)


def _targets(model, folder, hookpoints=("layers.0", "layers.1")):
    run = write_sae_run(folder, hookpoints)
    out = []
    for name in hookpoints:
        encoder, hp = open_dictionary(model, str(run), name)
        meta = cache_meta(
            encoder, hp, ctx_len=CTX, window_len=WIN, rows=ROWS, top_k=SETTINGS.top_k, sample_size=SETTINGS.sample_size
        )
        out.append((hp, encoder, meta))
    return out


def _fresh(targets, **changes):
    return [(hp, enc, dataclasses.replace(meta, n_rows=0, complete=False, **changes)) for hp, enc, meta in targets]


def _contents(root) -> dict:
    out: dict = {}
    if (root / INDEX).exists():
        out[INDEX] = (root / INDEX).read_text()
    for hookpoint, folder in (hookpoint_folders(root) or {}).items():
        for name in (*FILES, "meta.json"):
            out[f"{hookpoint}/{name}"] = (folder / name).read_bytes()
        for field, value in vars(LatentState.load(folder / "state.npz")).items():
            out[f"{hookpoint}/state.{field}"] = value.tolist()
    return out


def _in_parts(tmp_path, model, targets, rows, bounds):
    """Each part's cache built on its own with its first row's offset, then merged."""
    parts = []
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        part = tmp_path / f"part{i}"
        build_caches(
            part,
            itertools.islice(rows(), start, end),
            model=model,
            targets=_fresh(targets, max_tokens=(end - start) * CTX),
            settings=SETTINGS,
            progress=False,
            first_row=start,
        )
        parts.append(part)
    return merge_caches(parts, tmp_path / "merged", max_tokens=CTX * ROWS), parts


def _check_equal(tmp_path, model, targets, rows, bounds):
    whole = build_caches(
        tmp_path / "whole", rows(), model=model, targets=_fresh(targets), settings=SETTINGS, progress=False
    )
    merged, _ = _in_parts(tmp_path, model, targets, rows, bounds)
    assert merged == whole
    got, want = _contents(tmp_path / "merged"), _contents(tmp_path / "whole")
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key


def test_parts_merged_equal_one_pass(tmp_path, llama):
    targets = _targets(llama, tmp_path / "sae")
    _check_equal(tmp_path, llama, targets, lambda: token_rows(ROWS, CTX), [0, 8, 16, ROWS])


def test_parts_merged_equal_one_pass_when_windows_tie(tmp_path, llama):
    """A corpus of a few rows repeated: the same tokens at the same place activate alike, so windows tie;
    the earlier window is kept, however the corpus was cut."""
    distinct = list(token_rows(3, CTX, seed=5))
    targets = _targets(llama, tmp_path / "sae")
    _check_equal(tmp_path, llama, targets, lambda: iter([distinct[i % 3] for i in range(ROWS)]), [0, 4, 12, ROWS])
    state = LatentState.load(tmp_path / "whole" / "layers.1" / "state.npz")
    fired = state.top_val[:, 0] > 0
    assert fired.any()
    # the strongest window of each latent is in the first 3 rows (the first copy of each)
    assert (state.top_win[fired, 0] < 3 * CTX // WIN).all()


def test_keep_best_breaks_ties_by_window_and_empties_slots():
    values = torch.tensor([[1.0, 3.0, 3.0, -np.inf, 2.0]])
    windows = torch.tensor([[0, 1, 2, 3, 4]])
    best, kept = keep_best(values, windows, 4, largest=True)
    assert best.tolist() == [[3.0, 3.0, 2.0, 1.0]] and kept.tolist() == [[1, 2, 4, 0]]
    keys = torch.tensor([[0.5, np.inf, 0.25, 0.5, 0.75]])
    best, kept = keep_best(keys, windows, 5, largest=False)
    assert kept.tolist() == [[2, 0, 3, 4, -1]]  # the empty slot (an infinite key) holds window -1


def test_a_merge_cut_short_is_redone_and_parts_must_agree(tmp_path, llama):
    targets = _targets(llama, tmp_path / "sae")
    rows = lambda: token_rows(ROWS, CTX)  # noqa: E731
    _, parts = _in_parts(tmp_path, llama, targets, rows, [0, 8, ROWS])
    want = _contents(tmp_path / "merged")
    # the merge of layers.1 cut short: its meta not yet complete, its files cut
    folder = tmp_path / "merged" / "layers.1"
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    (folder / "values.bin").write_bytes(b"")
    merge_caches(parts, tmp_path / "merged", max_tokens=CTX * ROWS)
    assert _contents(tmp_path / "merged") == want
    other = tmp_path / "other"
    build_caches(
        other,
        token_rows(4, CTX),
        model=llama,
        targets=_fresh(targets[:1], max_tokens=4 * CTX),
        settings=SETTINGS,
        progress=False,
    )
    with pytest.raises(CacheError, match="caches hookpoints"):
        merge_caches([parts[0], other], tmp_path / "merged2", max_tokens=CTX * ROWS)
    assert read_meta(parts[0] / "layers.0").complete


def test_a_lost_doubled_or_shifted_part_does_not_pass_for_one_pass(tmp_path, llama):
    """The value-for-value comparison the Ray tests rely on catches the merge bugs it is there for."""
    targets = _targets(llama, tmp_path / "sae")
    rows = lambda: token_rows(ROWS, CTX)  # noqa: E731
    build_caches(tmp_path / "whole", rows(), model=llama, targets=_fresh(targets), settings=SETTINGS, progress=False)
    want = _contents(tmp_path / "whole")
    _, parts = _in_parts(tmp_path, llama, targets, rows, [0, 8, 16, ROWS])
    shifted = tmp_path / "shifted"  # the middle part cached as if it began one row later
    build_caches(
        shifted,
        itertools.islice(rows(), 8, 16),
        model=llama,
        targets=_fresh(targets, max_tokens=8 * CTX),
        settings=SETTINGS,
        progress=False,
        first_row=9,
    )
    for name, chosen in [("lost", [parts[0], parts[2]]), ("doubled", [parts[0], parts[1], parts[1], parts[2]])]:
        merge_caches(chosen, tmp_path / name, max_tokens=CTX * ROWS)
        assert _contents(tmp_path / name) != want, name
    merge_caches([parts[0], shifted, parts[2]], tmp_path / "shifted-merge", max_tokens=CTX * ROWS)
    assert _contents(tmp_path / "shifted-merge") != want


def test_the_thread_count_is_recorded_and_parts_of_other_counts_merge_as_unknown(tmp_path, llama):
    """A forward pass's last bits can depend on torch's thread count, so each cache says which it ran with;
    a merge of parts that ran with different counts says it does not know."""
    targets = _targets(llama, tmp_path / "sae")
    rows = lambda: token_rows(ROWS, CTX)  # noqa: E731
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        whole = build_caches(
            tmp_path / "whole", rows(), model=llama, targets=_fresh(targets), settings=SETTINGS, progress=False
        )
        assert {m.threads for m in whole} == {1}
        part = tmp_path / "part1"
        build_caches(
            part,
            itertools.islice(rows(), 8, ROWS),
            model=llama,
            targets=_fresh(targets, max_tokens=(ROWS - 8) * CTX),
            settings=SETTINGS,
            progress=False,
            first_row=8,
        )
        torch.set_num_threads(2)
        first = tmp_path / "part0"
        build_caches(
            first,
            itertools.islice(rows(), 0, 8),
            model=llama,
            targets=_fresh(targets, max_tokens=8 * CTX),
            settings=SETTINGS,
            progress=False,
        )
    finally:
        torch.set_num_threads(before)
    merged = merge_caches([first, part], tmp_path / "merged", max_tokens=CTX * ROWS)
    assert {m.threads for m in merged} == {None}
    assert [read_meta(f).threads for f in (hookpoint_folders(part) or {}).values()] == [1, 1]
