"""A whole checkpoint in one run: every hookpoint cached in one forward pass that stops after the deepest
block, per-hookpoint caches that resume where each stopped, dictionaries of several hookpoints, and the
latent choices made for big dictionaries (ranges, seeded samples)."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest
import torch
from helpers.checkpoint_fixtures import HOOKPOINTS, write_sae_run, write_saelens
from helpers.tiny_subjects import cache_meta, make_tiny_llama, token_rows, write_sparsify_sae

from autointerp.cache import build
from autointerp.cache.build import CacheSettings, build_cache, build_caches
from autointerp.cache.store import INDEX, ActivationCache, CacheError, CacheMeta, HookpointCaches, hookpoint_folders
from autointerp.latent_choice import (
    LatentSpecError,
    choose_latents,
    expand_latents,
    out_of_range,
    parse_latents,
)
from autointerp.subjects.attach import open_dictionaries, open_dictionary
from autointerp.subjects.dictionaries import DictionaryError
from autointerp.subjects.hookpoints import base_model, capture, capture_many, resolve
from autointerp.subjects.sources import ALL, SourceError, locate_dictionaries

CTX, WIN, ROWS = 64, 16, 20
FILES = ("tokens.bin", "indptr.bin", "latents.bin", "values.bin", "state.npz")


@pytest.fixture(scope="module")
def llama3():
    return make_tiny_llama(layers=3)


def _layer_calls(model) -> tuple[Counter, list]:
    """Counts each decoder block's forward calls (hooks that the caller removes)."""
    calls: Counter = Counter()
    handles = [
        layer.register_forward_hook(lambda _m, _i, _o, n=n: calls.update([n]))
        for n, layer in enumerate(base_model(model).layers)
    ]
    return calls, handles


def test_one_forward_pass_reads_every_hookpoint_and_stops_after_the_deepest(llama3):
    ids = torch.from_numpy(np.stack(list(token_rows(2, CTX)))).long()
    points = [resolve(llama3, name) for name in ("layers.1", "layers.0", "blocks.1.hook_resid_post")]
    calls, handles = _layer_calls(llama3)
    try:
        together = capture_many(llama3, points, ids)
    finally:
        for h in handles:
            h.remove()
    assert calls == {0: 1, 1: 1}  # one pass; block 2 never ran
    for point, got in zip(points, together, strict=True):
        torch.testing.assert_close(got, capture(llama3, point, ids))
    # an earlier hookpoint alone stops earlier
    calls, handles = _layer_calls(llama3)
    try:
        capture_many(llama3, [points[1]], ids)
    finally:
        for h in handles:
            h.remove()
    assert calls == {0: 1}


# ---------------------------------------------------------------- the caches


def _targets(model, folder, hookpoints=HOOKPOINTS):
    run = write_sae_run(folder, hookpoints)
    out = []
    for name in hookpoints:
        encoder, hp = open_dictionary(model, str(run), name)
        out.append((hp, encoder, _meta(encoder, hp)))
    return out


def _meta(encoder, hp) -> CacheMeta:
    return cache_meta(encoder, hp, ctx_len=CTX, window_len=WIN, rows=ROWS)


SETTINGS = CacheSettings(ctx_len=CTX, window_len=WIN, top_k=6, sample_size=8, batch_rows=4, checkpoint_rows=8)


def _fresh(targets):
    """The targets with fresh metadata (a build fills in the one it is given)."""
    return [(hp, enc, dataclasses.replace(meta, n_rows=0, complete=False)) for hp, enc, meta in targets]


def _same_files(a, b) -> None:
    for name in FILES[:4]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), (a, name)
    with np.load(a / "state.npz") as x, np.load(b / "state.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for key in x.files:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{a} {key}")


def test_every_hookpoint_is_cached_in_one_pass_and_equals_its_own_cache(tmp_path, llama3):
    targets = _targets(llama3, tmp_path / "sae")
    calls, handles = _layer_calls(llama3)
    try:
        metas = build_caches(
            tmp_path / "all", token_rows(ROWS + 3, CTX), model=llama3, targets=_fresh(targets), settings=SETTINGS
        )
    finally:
        for h in handles:
            h.remove()
    batches = -(-ROWS // SETTINGS.batch_rows)
    assert calls == {0: batches, 1: batches, 2: batches}  # once per batch, not once per hookpoint
    assert [m.hookpoint for m in metas] == list(HOOKPOINTS) and all(m.complete and m.n_rows == ROWS for m in metas)
    folders = hookpoint_folders(tmp_path / "all")
    assert (tmp_path / "all" / INDEX).is_file() and list(folders) == list(HOOKPOINTS)
    for hp, encoder, meta in _fresh(targets):
        alone = tmp_path / f"alone-{hp.name}"
        build_cache(
            alone,
            token_rows(ROWS + 3, CTX),
            model=llama3,
            hookpoint=hp,
            encoder=encoder,
            meta=meta,
            settings=SETTINGS,
            progress=False,
        )
        _same_files(folders[hp.name], alone)
    caches = HookpointCaches(tmp_path / "all")
    assert caches.hookpoints == list(HOOKPOINTS) and caches.open("layers.2").meta.hookpoint == "layers.2"
    with pytest.raises(CacheError, match="has no hookpoint 'layers.7'; it has layers.0, layers.1, layers.2"):
        caches.open("layers.7")


def test_only_the_blocks_up_to_the_deepest_hookpoint_run(tmp_path, llama3):
    targets = _targets(llama3, tmp_path / "sae", ("layers.0", "layers.1"))
    calls, handles = _layer_calls(llama3)
    try:
        build_caches(tmp_path / "c", token_rows(ROWS, CTX), model=llama3, targets=targets, settings=SETTINGS)
    finally:
        for h in handles:
            h.remove()
    assert set(calls) == {0, 1}


def test_an_interrupted_multi_hookpoint_cache_resumes_to_the_uninterrupted_result(tmp_path, llama3, monkeypatch):
    targets = _targets(llama3, tmp_path / "sae")
    build_caches(
        tmp_path / "clean", token_rows(ROWS + 3, CTX), model=llama3, targets=_fresh(targets), settings=SETTINGS
    )

    # 1: killed mid-pass, after the first checkpoint (8 rows) and with 4 more rows appended but not committed
    def crashing():
        for i, row in enumerate(token_rows(ROWS + 3, CTX)):
            if i == 13:
                raise KeyboardInterrupt
            yield row

    with pytest.raises(KeyboardInterrupt):
        build_caches(tmp_path / "crash", crashing(), model=llama3, targets=_fresh(targets), settings=SETTINGS)
    with pytest.raises(CacheError, match="incomplete"):
        HookpointCaches(tmp_path / "crash")
    build_caches(
        tmp_path / "crash", token_rows(ROWS + 3, CTX), model=llama3, targets=_fresh(targets), settings=SETTINGS
    )

    # 2: killed between two hookpoints' checkpoints, so they stopped at different rows
    real = build._checkpoint
    seen = []

    def dies_on_the_sixth(folder, meta, state, appender):
        seen.append(meta.hookpoint)
        if len(seen) == 6:  # the second checkpoint (16 rows): layers.0 and .1 committed it, layers.2 did not
            raise KeyboardInterrupt
        real(folder, meta, state, appender)

    monkeypatch.setattr(build, "_checkpoint", dies_on_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        build_caches(
            tmp_path / "between", token_rows(ROWS + 3, CTX), model=llama3, targets=_fresh(targets), settings=SETTINGS
        )
    monkeypatch.setattr(build, "_checkpoint", real)
    folders = hookpoint_folders(tmp_path / "between")
    rows = {hp: int(np.load(folder / "state.npz")["n_rows"]) for hp, folder in folders.items()}
    assert rows == {"layers.0": 16, "layers.1": 16, "layers.2": 8}
    calls, handles = _layer_calls(llama3)
    try:  # in batches of 3 this time: a batch then straddles the rows two hookpoints already hold
        build_caches(
            tmp_path / "between",
            token_rows(ROWS + 3, CTX),
            model=llama3,
            targets=_fresh(targets),
            settings=dataclasses.replace(SETTINGS, batch_rows=3),
        )
    finally:
        for h in handles:
            h.remove()
    assert calls[0] == 4  # resumed from row 8 (the hookpoint furthest behind): rows 8-19 in batches of 3

    clean = hookpoint_folders(tmp_path / "clean")
    for hp, folder in hookpoint_folders(tmp_path / "crash").items():
        _same_files(folder, clean[hp])
    # batched differently, the model's floats differ in their last bits: the same rows, counts and windows
    for hp, folder in hookpoint_folders(tmp_path / "between").items():
        a, b = ActivationCache(folder), ActivationCache(clean[hp])
        assert (folder / "tokens.bin").read_bytes() == (clean[hp] / "tokens.bin").read_bytes()
        assert a.meta.n_rows == b.meta.n_rows == ROWS
        for field in ("fire_tokens", "fire_windows"):
            np.testing.assert_array_equal(getattr(a.state, field), getattr(b.state, field), err_msg=f"{hp} {field}")
        np.testing.assert_allclose(a.state.max_act, b.state.max_act, rtol=1e-4)
        for latent in range(a.num_latents):
            np.testing.assert_array_equal(a.sampled_windows(latent), b.sampled_windows(latent))
            assert set(a.top_windows(latent)[0]) == set(b.top_windows(latent)[0])


def test_a_cache_of_other_hookpoints_is_refused(tmp_path, llama3):
    targets = _targets(llama3, tmp_path / "sae")
    build_caches(tmp_path / "c", token_rows(ROWS, CTX), model=llama3, targets=_fresh(targets[:2]), settings=SETTINGS)
    with pytest.raises(CacheError, match=r"holds a cache of hookpoints \['layers.0', 'layers.1'\]"):
        build_caches(tmp_path / "c", token_rows(ROWS, CTX), model=llama3, targets=_fresh(targets), settings=SETTINGS)


def test_a_single_hookpoint_cache_of_earlier_versions_reads_as_a_run_of_one(tmp_path, llama3):
    """A folder written before runs had several hookpoints: its cache is the folder itself."""
    (hp, encoder, meta), *_ = _targets(llama3, tmp_path / "sae")
    build_cache(tmp_path / "cache", token_rows(ROWS, CTX), model=llama3, hookpoint=hp, encoder=encoder, meta=meta,
                settings=SETTINGS, progress=False)  # fmt: skip
    assert not (tmp_path / "cache" / INDEX).exists()
    caches = HookpointCaches(tmp_path / "cache")
    assert caches.hookpoints == ["layers.0"] and caches.open("layers.0").folder == tmp_path / "cache"
    # and a new run of one hookpoint writes the same layout
    build_caches(tmp_path / "new", token_rows(ROWS, CTX), model=llama3, targets=_fresh([(hp, encoder, meta)]),
                 settings=SETTINGS)  # fmt: skip
    _same_files(tmp_path / "new", tmp_path / "cache")
    assert ActivationCache(tmp_path / "new").meta.hookpoint == "layers.0"


# ---------------------------------------------------------------- dictionaries of several hookpoints


def test_hookpoints_of_a_sparsify_run(tmp_path):
    run = write_sae_run(tmp_path / "run", ("layers.10", "layers.2", "layers.1"))
    every = locate_dictionaries(str(run), [ALL])
    assert [s.hookpoint for s in every] == ["layers.1", "layers.2", "layers.10"]  # as people count
    assert [s.hookpoint for s in locate_dictionaries(str(run), ["layers.2", "layers.1"])] == ["layers.2", "layers.1"]
    with pytest.raises(SourceError, match=r"has no hookpoint layers.7; it has layers.1, layers.10, layers.2"):
        locate_dictionaries(str(run), ["layers.1", "layers.7"])
    with pytest.raises(SourceError, match="several hookpoints, pick one with --hookpoint.*--hookpoints all"):
        locate_dictionaries(str(run), None)


def test_all_on_a_folder_of_one_hookpoint_just_works(tmp_path, llama3):
    one = write_sparsify_sae(tmp_path / "only" / "layers.1")
    for spec in (one.parent, one):  # a run folder holding one hookpoint, and the hookpoint folder itself
        sources = locate_dictionaries(str(spec), [ALL])
        ((encoder, hp),) = open_dictionaries(llama3, sources, [ALL])
        assert hp.name == "layers.1" and encoder.num_latents == 24


def test_a_folder_of_saelens_folders_and_a_list_of_locations(tmp_path, llama3):
    folder = tmp_path / "saes"
    write_saelens(folder / "resid-0", "blocks.0.hook_resid_post", seed=1)
    write_saelens(folder / "resid-2", "blocks.2.hook_resid_post", seed=2)
    sources = locate_dictionaries(str(folder), [ALL])
    opened = open_dictionaries(llama3, sources, [ALL])
    assert [hp.name for _, hp in opened] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert [hp.module_path for _, hp in opened] == ["layers.0", "layers.2"]
    chosen = locate_dictionaries(str(folder), ["blocks.2.hook_resid_post"])
    assert [s.path.name for s in chosen] == ["resid-2"]
    with pytest.raises(SourceError, match="has no hookpoint blocks.1.hook_resid_post; it has blocks.0"):
        locate_dictionaries(str(folder), ["blocks.1.hook_resid_post"])

    # several locations: every dictionary they hold
    run = write_sae_run(tmp_path / "run", ("layers.1",))
    listed = f"{folder / 'resid-0'},{run}"
    opened = open_dictionaries(llama3, locate_dictionaries(listed, None), None)
    assert [hp.name for _, hp in opened] == ["blocks.0.hook_resid_post", "layers.1"]
    with pytest.raises(SourceError, match="--hookpoints can only be 'all' with several"):
        locate_dictionaries(listed, ["layers.1"])

    # two SAEs of one hookpoint (two widths, say): a run holds one dictionary per hookpoint
    write_saelens(folder / "resid-0-wide", "blocks.0.hook_resid_post", d_sae=40, seed=3)
    with pytest.raises(SourceError, match="several dictionaries read blocks.0.hook_resid_post"):
        locate_dictionaries(str(folder), [ALL])
    with pytest.raises(DictionaryError, match="two dictionaries read hookpoint 'layers.1'"):
        open_dictionaries(llama3, locate_dictionaries(f"{run},{run}", None), None)


def test_neurons_of_several_layers(llama3):
    opened = open_dictionaries(llama3, "neurons", ["layers.0", "layers.2"], neurons_k=4)
    assert [hp.name for _, hp in opened] == ["layers.0.mlp.down_proj", "layers.2.mlp.down_proj"]
    assert len(open_dictionaries(llama3, "neurons", [ALL])) == 3


# ---------------------------------------------------------------- which latents


def test_latent_ranges_parse_expand_and_are_checked():
    assert parse_latents("3, 17,100:104") == [3, 17, "100:104"]
    assert expand_latents([3, 17, "100:104", 3]) == [3, 17, 100, 101, 102, 103]
    assert out_of_range([3, "10:20"], 20) == [] and out_of_range([3, "10:21", 25], 20) == ["10:21", "25"]
    for bad, words in (("5:5", "empty"), ("7:", "START:STOP"), ("x", "indices and ranges"), ("-2", "start at 0")):
        with pytest.raises(LatentSpecError, match=words):
            parse_latents(bad)


def test_a_latent_sample_is_seeded_per_hookpoint_and_drawn_from_the_eligible():
    eligible = list(range(0, 1000, 3))
    kw = dict(latents=None, max_latents=10, sample_latents=25, seed=0)
    a = choose_latents(eligible, hookpoint="layers.4", **kw)
    assert len(a) == 25 and a == sorted(a) and set(a) <= set(eligible)
    assert a == choose_latents(eligible, hookpoint="layers.4", **kw)  # the same command picks the same latents
    assert a != choose_latents(eligible, hookpoint="layers.8", **kw)  # each hookpoint its own draw
    assert a != choose_latents(eligible, hookpoint="layers.4", **{**kw, "seed": 1})
    assert a != eligible[:25]  # a sample, not the first ones
    # with names: a sample of the eligible ones among them; without a sample: as given, and max_latents
    named = choose_latents(eligible, hookpoint="h", **{**kw, "latents": ["0:30"], "sample_latents": 4})
    assert len(named) == 4 and set(named) <= {0, 3, 6, 9, 12, 15, 18, 21, 24, 27}
    assert choose_latents(eligible, hookpoint="h", **{**kw, "sample_latents": 5000}) == eligible
    assert choose_latents(eligible, hookpoint="h", **{**kw, "sample_latents": None}) == eligible[:10]
    assert choose_latents(eligible, hookpoint="h", **{**kw, "latents": [1, "5:7"], "sample_latents": None}) == [1, 5, 6]


def test_the_python_api_checks_hookpoints_and_latents_as_the_command_line_does(tmp_path):
    import autointerp

    run = autointerp.Run(tmp_path / "r", hookpoints=["layers.4", "layers.8"], latents=["0:1000", 4096], echo=None)
    assert run.config.requested_hookpoints == ["layers.4", "layers.8"] and run.config.latents == ["0:1000", 4096]
    bad = {
        "the latent range 5:5 is empty": {"latents": ["5:5"]},
        "--latents must be a list of integers or strings or None, not [2.5]": {"latents": [2.5]},
        "--sample-latents must be at least 1, got 0": {"sample_latents": 0},
        "give it or --max-latents, not both": {"sample_latents": 3, "max_latents": 4},
        "--hookpoint NAME (one) or --hookpoints NAMES|all (several), not both": {"hookpoint": "x", "hookpoints": ["y"]},
        "--hookpoints is either 'all' or names, not both": {"hookpoints": ["all", "layers.1"]},
    }
    for words, options in bad.items():
        with pytest.raises(autointerp.AutointerpError, match=re.escape(words)):
            autointerp.Run(tmp_path / "r", echo=None, **options)
