"""Records drawn from a real (tiny) cache: disjoint splits, quantile spread, silent negatives."""

from __future__ import annotations

import pytest

from autointerp.cache.store import ActivationCache
from autointerp.sampling import NotEnoughExamples, Sampler, SamplingSettings, quantile_bins, stratified_pick

WIN = 8  # the tiny cache: 48 rows of 64 tokens, windows of 8


@pytest.fixture
def cache(tiny_cache) -> ActivationCache:
    return tiny_cache


def _decode(ids):
    return [f" t{i}" for i in ids]


SETTINGS = SamplingSettings(n_train=20, n_test=25, n_negatives=25, n_train_negatives=10, min_examples=10)


def _eligible(cache, settings=SETTINGS):
    return [i for i in range(cache.num_latents) if cache.state.fire_windows[i] >= settings.min_examples]


def test_train_and_test_never_share_a_window(cache):
    latents = _eligible(cache)
    assert len(latents) >= 5
    for seed in range(3):
        sampler = Sampler(cache, _decode, SamplingSettings(**{**SETTINGS.__dict__, "seed": seed}))
        for latent in latents:
            r = sampler.record(latent)
            assert r.train and r.test
            assert not (r.train_windows() & r.test_windows()), (seed, latent)
            assert not (r.validation_windows() & (r.train_windows() | r.test_windows())), (seed, latent)
            assert len({e.window for e in r.test}) == len(r.test)  # no duplicates either
            everything = r.train + r.test + r.validation + r.negatives + r.train_negatives + r.validation_negatives
            assert len(everything) == len({e.window for e in everything})
            assert all(e.activating for e in r.validation)
            assert not any(e.activating for e in r.validation_negatives)
            assert len(r.validation_negatives) <= len(r.validation)  # fewer only when silent windows run out
        assert any(sampler.record(latent).validation for latent in latents)


def test_top_train_type_is_disjoint_too(cache):
    sampler = Sampler(cache, _decode, SamplingSettings(**{**SETTINGS.__dict__, "train_type": "top"}))
    for latent in _eligible(cache):
        r = sampler.record(latent)
        assert not (r.train_windows() & r.test_windows())
        assert not (r.validation_windows() & (r.train_windows() | r.test_windows()))
        maxima = [e.max_activation for e in r.train]
        assert maxima == sorted(maxima, reverse=True)


def test_examples_are_what_the_cache_says(cache):
    sampler = Sampler(cache, _decode, SETTINGS)
    latent = _eligible(cache)[0]
    r = sampler.record(latent)
    for e in r.train + r.test:
        assert e.activating and len(e.tokens) == WIN and e.str_tokens == _decode(e.tokens)
    for e in r.negatives + r.train_negatives:
        assert not e.activating and not cache.fires_in(e.window, latent)


def test_test_examples_span_the_activation_quantiles(cache):
    sampler = Sampler(cache, _decode, SETTINGS)
    latent = max(_eligible(cache), key=lambda i: cache.state.fire_windows[i])
    r = sampler.record(latent)
    assert len({e.quantile for e in r.test}) == SETTINGS.n_quantiles
    weakest = [e.max_activation for e in r.test if e.quantile == 0]
    strongest = [e.max_activation for e in r.test if e.quantile == SETTINGS.n_quantiles - 1]
    assert max(weakest) <= min(strongest)


def test_records_are_deterministic_and_order_free(cache):
    latents = _eligible(cache)[:4]
    a = [Sampler(cache, _decode, SETTINGS).record(i) for i in latents]
    b = [Sampler(cache, _decode, SETTINGS).record(i) for i in reversed(latents)][::-1]
    for ra, rb in zip(a, b, strict=True):
        assert [e.window for e in ra.train] == [e.window for e in rb.train]
        assert [e.window for e in ra.test] == [e.window for e in rb.test]
        assert [e.window for e in ra.negatives] == [e.window for e in rb.negatives]


def test_rare_latents_are_refused_with_a_reason(cache):
    rare = [i for i in range(cache.num_latents) if cache.state.fire_windows[i] < 10]
    sampler = Sampler(cache, _decode, SETTINGS)
    if not rare:
        pytest.skip("every latent of this random SAE fires often")
    with pytest.raises(NotEnoughExamples, match="fewer than min_examples"):
        sampler.record(rare[0])


def test_small_pool_keeps_half_for_the_explainer(cache):
    sampler = Sampler(cache, _decode, SamplingSettings(n_train=100, n_test=100, min_examples=10))
    latent = min(_eligible(cache), key=lambda i: cache.state.fire_windows[i])
    r = sampler.record(latent)
    pool = len(cache.sampled_windows(latent))
    assert len(r.test) == pool // 2 and len(r.train) == pool - pool // 2


def test_stratified_pick_spreads_over_bins():
    import numpy as np

    rng = np.random.default_rng(0)
    bins = quantile_bins(np.arange(100), np.arange(100, dtype=float), 10)
    picked = stratified_pick(bins, 20, rng)
    assert sorted(np.bincount(np.array(picked) // 10, minlength=10).tolist()) == [2] * 10
