"""The activation cache against brute force, across batch sizes, and across a crash."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers.tiny_subjects import cache_meta, token_rows

from autointerp.cache.build import CacheSettings, build_cache, encode_batch
from autointerp.cache.store import ActivationCache, CacheError, CacheMeta
from autointerp.subjects.attach import open_dictionary

CTX, WIN, ROWS = 64, 16, 24


def _meta(encoder, hookpoint, **kw) -> CacheMeta:
    return cache_meta(encoder, hookpoint, ctx_len=CTX, window_len=WIN, rows=ROWS, **kw)


def _build(folder, model, encoder, hp, *, batch_rows=4, checkpoint_rows=8, rows=None, **meta_kw):
    settings = CacheSettings(
        ctx_len=CTX, window_len=WIN, top_k=6, sample_size=8, batch_rows=batch_rows, checkpoint_rows=checkpoint_rows
    )
    rows = rows if rows is not None else token_rows(ROWS + 5, CTX)
    build_cache(
        folder,
        rows,
        model=model,
        hookpoint=hp,
        encoder=encoder,
        meta=_meta(encoder, hp, **meta_kw),
        settings=settings,
        progress=False,
    )
    return ActivationCache(folder)


@pytest.fixture
def setup(tiny_llama, tiny_sae):
    encoder, hp = open_dictionary(tiny_llama, str(tiny_sae.parent), None)
    return tiny_llama, encoder, hp


def _dense(model, encoder, hp) -> torch.Tensor:
    tokens = np.stack(list(token_rows(ROWS, CTX)))
    return encode_batch(model, hp, encoder, tokens, torch.device("cpu"))  # [rows, ctx, L]


def test_cache_matches_brute_force(tmp_path, setup):
    model, encoder, hp = setup
    cache = _build(tmp_path / "c", model, encoder, hp)
    dense = _dense(model, encoder, hp)
    assert cache.meta.n_rows == ROWS and cache.meta.complete
    windows = dense.view(-1, WIN, encoder.num_latents)  # [n_windows, WIN, L]
    wmax = windows.amax(1)
    for latent in range(encoder.num_latents):
        stats = cache.stats(latent)
        assert stats.fire_tokens == int((dense[..., latent] > 0).sum())
        assert stats.fire_windows == int((wmax[:, latent] > 0).sum())
        # top windows: the strongest windows, strongest first
        top, vals = cache.top_windows(latent)
        expect = torch.sort(wmax[:, latent][wmax[:, latent] > 0], descending=True).values[: len(top)]
        np.testing.assert_allclose(vals, expect.numpy(), rtol=1e-6)
        # the sample holds only activating windows, as many as it can
        sample = cache.sampled_windows(latent)
        assert len(sample) == min(8, stats.fire_windows)
        assert all(wmax[w, latent] > 0 for w in sample)
    # per-token values round-trip through the sparse store (float16)
    for w in (0, 5, len(windows) - 1):
        for latent in range(encoder.num_latents):
            np.testing.assert_allclose(
                cache.window_activations(w, latent), windows[w, :, latent].numpy(), rtol=2e-3, atol=2e-3
            )
    assert (cache.window_tokens(3) == np.stack(list(token_rows(ROWS, CTX))).reshape(-1, WIN)[3]).all()


def test_position_zero_is_never_cached(tmp_path, setup):
    model, encoder, hp = setup
    cache = _build(tmp_path / "c", model, encoder, hp)
    for row in range(ROWS):
        w = row * (CTX // WIN)
        for latent in range(encoder.num_latents):
            assert cache.window_activations(w, latent)[0] == 0


def test_summaries_do_not_depend_on_batching(tmp_path, setup):
    model, encoder, hp = setup
    a = _build(tmp_path / "a", model, encoder, hp, batch_rows=3)
    b = _build(tmp_path / "b", model, encoder, hp, batch_rows=5)
    for field in ("fire_tokens", "fire_windows"):
        np.testing.assert_array_equal(getattr(a.state, field), getattr(b.state, field))
    for latent in range(encoder.num_latents):
        np.testing.assert_array_equal(a.sampled_windows(latent), b.sampled_windows(latent))
        np.testing.assert_array_equal(a.top_windows(latent)[0], b.top_windows(latent)[0])
    np.testing.assert_allclose(a.state.max_act, b.state.max_act, rtol=1e-5)


def test_a_batch_encoded_a_row_at_a_time_gives_the_same_cache(tmp_path, setup, monkeypatch):
    """Long contexts and wide dictionaries are encoded a few rows of a batch at a time: same cache."""
    import autointerp.cache.build as build

    model, encoder, hp = setup
    a = _build(tmp_path / "a", model, encoder, hp, batch_rows=5)
    monkeypatch.setattr(build, "MAX_DENSE_ELEMENTS", CTX * encoder.num_latents)  # one row per piece
    b = _build(tmp_path / "b", model, encoder, hp, batch_rows=5)
    for name in ("tokens.bin", "indptr.bin", "latents.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    np.testing.assert_allclose(
        np.fromfile(tmp_path / "a" / "values.bin", np.float16),
        np.fromfile(tmp_path / "b" / "values.bin", np.float16),
        rtol=1e-3,
    )
    for latent in range(encoder.num_latents):
        np.testing.assert_array_equal(a.sampled_windows(latent), b.sampled_windows(latent))
        np.testing.assert_array_equal(a.top_windows(latent)[0], b.top_windows(latent)[0])


def test_resume_after_crash_equals_uninterrupted(tmp_path, setup):
    model, encoder, hp = setup
    clean = _build(tmp_path / "clean", model, encoder, hp)

    def crashing():
        for i, row in enumerate(token_rows(ROWS + 5, CTX)):
            if i == 14:  # after the checkpoint at 8 rows, with rows 8-11 appended but not checkpointed
                raise KeyboardInterrupt
            yield row

    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "crash", model, encoder, hp, rows=crashing())
    with pytest.raises(CacheError, match="incomplete"):
        ActivationCache(tmp_path / "crash")
    resumed = _build(tmp_path / "crash", model, encoder, hp)
    for name in ("tokens.bin", "indptr.bin", "latents.bin", "values.bin"):
        assert (tmp_path / "crash" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    for field in dataclasses.fields(clean.state):
        np.testing.assert_array_equal(getattr(clean.state, field.name), getattr(resumed.state, field.name))


def test_memory_state_is_sized_by_latents_not_tokens(tmp_path, setup):
    model, encoder, hp = setup
    small = _build(tmp_path / "s", model, encoder, hp, max_tokens=CTX * 4)
    large = _build(tmp_path / "l", model, encoder, hp, max_tokens=CTX * ROWS)
    assert large.meta.n_tokens == 6 * small.meta.n_tokens
    for field in dataclasses.fields(small.state):
        assert getattr(small.state, field.name).shape == getattr(large.state, field.name).shape


def test_cache_with_other_settings_is_refused(tmp_path, setup):
    model, encoder, hp = setup
    _build(tmp_path / "c", model, encoder, hp)
    with pytest.raises(CacheError, match="other settings"):
        _build(tmp_path / "c", model, encoder, hp, seed=1)
