"""Hard negatives (`similar`, `cooccurring`) on the tiny cache, with a bag-of-words embedder:
silent for the latent, never in two splits (not even across runs whose rankings differ),
deterministic per (seed, latent), and harder than random ones."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.fake_embedder import fake_embedder
from helpers.tiny_subjects import decode_ids

from autointerp.errors import ConfigError
from autointerp.negatives import cofiring_jaccard, cooccurring_latents, negative_groups
from autointerp.sampling import Sampler, SamplingSettings

BASE = SamplingSettings(
    n_train=20, n_test=25, n_negatives=25, n_train_negatives=10, n_validation=8, min_examples=10, similar_pool=200
)
KINDS = ["random", "similar", "cooccurring"]


def _settings(**kw) -> SamplingSettings:
    return SamplingSettings(**{**BASE.__dict__, **kw})


def _sampler(cache, kind, embedder=None, **kw) -> Sampler:
    return Sampler(cache, decode_ids, _settings(negatives=kind, **kw), embedder=embedder or fake_embedder())


def _latents(cache):
    """Eligible latents silent in at least 80 windows (two of the tiny SAE's latents fire on every token,
    and a latent silent almost nowhere cannot fill each side of the split)."""
    fire = cache.state.fire_windows
    return [i for i in range(cache.num_latents) if BASE.min_examples <= fire[i] <= cache.meta.n_windows - 80]


@pytest.mark.parametrize("kind", KINDS)
def test_negatives_are_silent_and_the_split_is_disjoint(tiny_cache, kind):
    latents = _latents(tiny_cache)
    assert len(latents) >= 5
    with_validation = 0
    for seed in (0, 1):
        sampler = _sampler(tiny_cache, kind, seed=seed)
        for latent in latents:
            r = sampler.record(latent)
            assert len(r.negatives) == BASE.n_negatives and len(r.train_negatives) == BASE.n_train_negatives
            assert len(r.validation_negatives) == len(r.validation)
            with_validation += bool(r.validation)
            for e in r.negatives + r.train_negatives + r.validation_negatives:
                assert not tiny_cache.fires_in(e.window, latent) and not e.activating
            _assert_disjoint(r, r)
            negs = [e.window for e in r.negatives + r.train_negatives + r.validation_negatives]
            assert len(set(negs)) == len(negs)
    assert with_validation >= 4


def _assert_disjoint(a, b):
    """No window of one split of `a` is in another split of `b`."""
    splits = [(x.train_windows(), x.test_windows(), x.validation_windows()) for x in (a, b)]
    for i in range(3):
        for j in range(3):
            if i != j:
                assert not splits[0][i] & splits[1][j], (i, j)


@pytest.mark.parametrize("kind", ["similar", "cooccurring"])
def test_hard_negatives_are_deterministic_and_order_free(tiny_cache, kind):
    latents = _latents(tiny_cache)[:4]
    a = [_sampler(tiny_cache, kind).record(i) for i in latents]
    b = [_sampler(tiny_cache, kind).record(i) for i in reversed(latents)][::-1]
    for ra, rb in zip(a, b, strict=True):
        assert [e.window for e in ra.negatives] == [e.window for e in rb.negatives]
        assert [e.window for e in ra.train_negatives] == [e.window for e in rb.train_negatives]
    other_seed = [_sampler(tiny_cache, kind, seed=5).record(i) for i in latents]
    assert any(
        [e.window for e in x.negatives] != [e.window for e in y.negatives] for x, y in zip(a, other_seed, strict=True)
    )


def test_similar_negatives_are_closer_to_the_activating_examples_than_random_ones(tiny_cache):
    emb = fake_embedder()
    closer = []
    for latent in _latents(tiny_cache):
        means = {}
        for kind in ("random", "similar"):
            r = _sampler(tiny_cache, kind, embedder=emb).record(latent)
            anchors = emb.encode([e.text for e in r.train + r.test])
            negs = emb.encode([e.text for e in r.negatives + r.train_negatives])
            means[kind] = float((negs @ anchors.T).max(axis=1).mean())
        closer.append(means["similar"] - means["random"])
    assert min(closer) > 0 and np.mean(closer) > 0.05, closer


def test_a_rerun_with_another_ranking_never_moves_a_window_across_the_split(tiny_cache):
    """Embeddings that differ between runs change the ranking; the side of each window must not."""
    for latent in _latents(tiny_cache):
        a = _sampler(tiny_cache, "similar", embedder=fake_embedder(salt=1)).record(latent)
        b = _sampler(tiny_cache, "similar", embedder=fake_embedder(salt=2)).record(latent)
        assert [e.window for e in a.negatives] != [e.window for e in b.negatives]  # the ranking did change
        _assert_disjoint(a, b)
        _assert_disjoint(b, a)


def test_the_candidate_pool_is_embedded_once_per_run(tiny_cache):
    emb = fake_embedder()
    sampler = _sampler(tiny_cache, "similar", embedder=emb)
    latents = _latents(tiny_cache)
    sampler.record(latents[0])
    first = emb.encoded
    sampler.record(latents[1])
    r = sampler.record(latents[1])
    assert emb.encoded - first <= len(r.train) + len(r.test)  # only the new latent's activating examples
    assert first >= BASE.similar_pool


def test_cooccurring_negatives_are_top_windows_of_co_firing_latents(tiny_cache):
    for latent in _latents(tiny_cache):
        neighbours = cooccurring_latents(tiny_cache, latent, BASE.n_cooccurring)
        assert neighbours and latent not in neighbours
        tops = set().union(*(set(tiny_cache.top_windows(i)[0].tolist()) for i in neighbours))
        silent_tops = [w for w in tops if not tiny_cache.fires_in(w, latent)]
        r = _sampler(tiny_cache, "cooccurring").record(latent)
        negs = {e.window for e in r.negatives + r.train_negatives}
        if len(silent_tops) >= 2 * len(negs):  # enough candidates: no random filler needed
            assert negs <= tops, latent


def test_cofiring_counts_match_a_brute_force_count(tiny_cache):
    latent = _latents(tiny_cache)[0]
    windows = tiny_cache.sampled_windows(latent)[:30]
    counts, own = tiny_cache.cofiring_counts(latent, windows)
    expected = np.zeros(tiny_cache.num_latents, np.int64)
    acts = {
        i: np.concatenate([tiny_cache.window_activations(int(w), i) for w in windows]) > 0
        for i in range(tiny_cache.num_latents)
    }
    for i in range(tiny_cache.num_latents):
        expected[i] = int((acts[i] & acts[latent]).sum())
    assert own == int(acts[latent].sum()) == counts[latent]
    np.testing.assert_array_equal(counts, expected)


class _StubCache:
    """Just what the co-firing ranking reads: latent 1 is a true partner of 0, latent 2 fires everywhere."""

    num_latents = 4

    class state:  # noqa: N801 - mimics the attribute of ActivationCache
        fire_tokens = np.array([100, 110, 10_000, 5])

    def sampled_windows(self, latent):
        return np.arange(3)

    def cofiring_counts(self, latent, windows):
        return np.array([50, 45, 50, 1]), 50  # the sample holds half of latent 0's firing tokens


def test_jaccard_prefers_a_partner_to_a_latent_that_fires_everywhere():
    jac = cofiring_jaccard(_StubCache(), 0)
    assert jac[0] == 0 and jac[1] > jac[2] > 0
    assert jac[1] == pytest.approx(90 / (100 + 110 - 90))  # 45 co-firing tokens in half the firing
    assert jac[2] == pytest.approx(100 / 10_000)  # co-fires on every token of latent 0, and 9,900 others
    assert cooccurring_latents(_StubCache(), 0, 1) == [1]


def test_groups_have_fixed_fractions_and_depend_on_the_latent():
    windows = np.arange(30_000)
    groups = negative_groups(windows, 0, 7, (50, 20, 30))
    np.testing.assert_allclose(np.bincount(groups, minlength=3) / len(windows), [0.5, 0.2, 0.3], atol=0.02)
    np.testing.assert_array_equal(groups, negative_groups(windows, 0, 7, (50, 20, 30)))
    assert (groups != negative_groups(windows, 0, 8, (50, 20, 30))).mean() > 0.3
    assert set(negative_groups(windows, 0, 7, (50, 0, 20)).tolist()) == {0, 2}  # an empty group gets nothing


def test_bad_settings_say_what_is_valid(tiny_cache):
    without = Sampler(tiny_cache, decode_ids, _settings(negatives="similar"))
    latent = _latents(tiny_cache)[0]
    with pytest.raises(ValueError, match="give the Sampler an embedder"):
        without.record(latent)
    # what needs no negatives needs no embedder: the activating examples are the same either way
    assert [e.window for e in without.record(latent, negatives=False).train] == [
        e.window for e in _sampler(tiny_cache, "similar").record(latent).train
    ]
    with pytest.raises(ConfigError, match="--negatives must be one of 'random', 'similar', 'cooccurring'"):
        _settings(negatives="hardest")
