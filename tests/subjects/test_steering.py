"""Steering a latent: where the edit lands, which positions it touches, and the strength search."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.tiny_subjects import make_tiny_llama, write_sparsify_sae

from autointerp.subjects.attach import open_dictionary
from autointerp.subjects.hookpoints import base_model
from autointerp.subjects.steering import (
    Steerer,
    SteeringError,
    generate_pair,
    kl_divergence,
    steering_edit,
    tune,
    tune_strength,
)

LATENT = 5


def peaked_llama():
    """The tiny random Llama with a sharper head: its next-token distributions are far from uniform,
    so a KL of 0.5 is within reach (the plain one's logits are all close to 0)."""
    model = make_tiny_llama(seed=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(60)
    return model


@pytest.fixture(scope="module")
def model():
    return peaked_llama()


@pytest.fixture
def sae(model, tmp_path):
    write_sparsify_sae(tmp_path / "sae" / "layers.0", seed=4)
    return open_dictionary(model, str(tmp_path / "sae"), None)


def _prompts(n: int = 4, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 96, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def _full_logits(model, ids, steerer=None, strength=0.0, start=0):
    strengths = torch.full((ids.shape[0],), float(strength))
    if steerer is None:
        return model(ids).logits.float()
    with steerer(strengths, start=start):
        return model(ids).logits.float()


def test_encode_decode_equals_adding_the_decoder_direction(model, sae):
    """With a linear decoder and the error added back, encode-bump-decode adds exactly s x W_dec[i]."""
    encoder, hp = sae
    x = torch.randn(10, encoder.d_in) * 3
    s = torch.linspace(0.5, 20, 10)
    site_ed, encode_decode = steering_edit(encoder, hp, LATENT, "encode_decode")
    site_dir, direction = steering_edit(encoder, hp, LATENT, "direction")
    assert site_ed == site_dir
    torch.testing.assert_close(encode_decode(x, s), x + s[:, None] * encoder.W_dec[LATENT], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(encode_decode(x, s), direction(x, s), atol=1e-4, rtol=1e-5)
    # and through the model
    ids = _prompts()
    by_ed = _full_logits(model, ids, Steerer(model, site_ed, encode_decode), 4.0)
    by_dir = _full_logits(model, ids, Steerer(model, site_dir, direction), 4.0)
    torch.testing.assert_close(by_ed, by_dir, atol=1e-4, rtol=1e-4)
    assert (by_ed - _full_logits(model, ids)).abs().max() > 0.1


def test_neurons_bump_the_activation_or_add_the_down_proj_column(model):
    """A neuron is steered by adding to its activation at the MLP; the same as adding its down_proj column."""
    encoder, hp = open_dictionary(model, "neurons", "layers.1")
    site_ed, _ = steering_edit(encoder, hp, LATENT, "encode_decode")
    site_dir, _ = steering_edit(encoder, hp, LATENT, "direction")
    assert site_ed.module_path == site_dir.module_path == "layers.1.mlp.down_proj"
    assert (site_ed.side, site_dir.side) == ("input", "output")
    ids = _prompts()
    bumped = _full_logits(model, ids, Steerer.for_latent(model, encoder, hp, LATENT, "encode_decode"), 3.0)
    added = _full_logits(model, ids, Steerer.for_latent(model, encoder, hp, LATENT, "direction"), 3.0)
    torch.testing.assert_close(bumped, added, atol=1e-4, rtol=1e-4)
    assert (bumped - _full_logits(model, ids)).abs().max() > 0.1

    # the activation itself moved by exactly the strength at neuron LATENT, nowhere else
    seen = []
    down = base_model(model).get_submodule("layers.1.mlp.down_proj")
    # a forward hook sees the input as the module got it, after the steering pre-hook edited it
    handle = down.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
    try:
        _full_logits(model, ids)
        _full_logits(model, ids, Steerer.for_latent(model, encoder, hp, LATENT), 3.0)
    finally:
        handle.remove()
    delta = seen[1] - seen[0]
    assert torch.allclose(delta[..., LATENT], torch.full_like(delta[..., LATENT], 3.0), atol=1e-5)
    assert delta[..., [i for i in range(delta.shape[-1]) if i != LATENT]].abs().max() < 1e-6


def test_transcoders_add_the_direction_to_the_module_output(model, tmp_path):
    write_sparsify_sae(tmp_path / "tc" / "layers.1.mlp", transcode=True, seed=5)
    encoder, hp = open_dictionary(model, str(tmp_path / "tc"), None)
    assert hp.side == "input"
    with pytest.raises(SteeringError, match="transcoder.*'direction'"):
        steering_edit(encoder, hp, LATENT, "encode_decode")
    site, _ = steering_edit(encoder, hp, LATENT)
    assert (site.module_path, site.side) == ("layers.1.mlp", "output")
    # the same as adding the direction to the MLP's output by hand
    mlp = base_model(model).get_submodule("layers.1.mlp")
    handle = mlp.register_forward_hook(lambda _m, _i, out: out + 2.0 * encoder.W_dec[LATENT])
    ids = _prompts()
    try:
        by_hand = _full_logits(model, ids)
    finally:
        handle.remove()
    torch.testing.assert_close(_full_logits(model, ids, Steerer.for_latent(model, encoder, hp, LATENT), 2.0), by_hand)


def test_what_cannot_be_steered_says_why(model, sae):
    encoder, hp = sae
    with pytest.raises(SteeringError, match="out of range"):
        steering_edit(encoder, hp, encoder.num_latents)
    with pytest.raises(SteeringError, match="valid"):
        steering_edit(encoder, hp, 0, "clamp")  # type: ignore[arg-type]
    from autointerp.subjects.dictionaries import neurons

    bare = neurons("layers.1.mlp.down_proj", 32)  # no W_out: no decoder directions
    with pytest.raises(SteeringError, match="no decoder directions"):
        steering_edit(bare, hp, 0, "direction")


def test_steering_changes_only_positions_from_the_last_prompt_position(model, sae):
    encoder, hp = sae
    steerer = Steerer.for_latent(model, encoder, hp, LATENT)
    ids = _prompts(length=10)
    last = 6  # the prompt is ids[:, :7]; the rest stands for generated tokens
    clean = _full_logits(model, ids)
    steered = _full_logits(model, ids, steerer, 5.0, start=last)
    assert torch.equal(clean[:, :last], steered[:, :last])
    assert ((clean[:, last:] - steered[:, last:]).abs().amax(-1) > 1e-3).all()
    # rows with strength 0 are left exactly alone
    strengths = torch.tensor([0.0, 5.0, 0.0, 5.0])
    with torch.inference_mode(), steerer(strengths, start=last):
        mixed = model(ids).logits.float()
    assert torch.equal(mixed[[0, 2]], clean[[0, 2]])
    torch.testing.assert_close(mixed[[1, 3]], steered[[1, 3]])


def test_cached_generation_steers_the_last_prompt_position_and_every_new_one(model, sae):
    """Greedy continuations from the KV-cached loop are what a full forward pass, steered from the last
    prompt position on, predicts at every step."""
    encoder, hp = sae
    steerer = Steerer.for_latent(model, encoder, hp, LATENT)
    ids = _prompts(length=7)
    clean, steered = generate_pair(model, ids, steerer, 5.0, 6, temperature=0.0)
    assert clean.shape == steered.shape == (4, 6)
    assert not torch.equal(clean, steered)
    last = ids.shape[1] - 1
    full_clean = _full_logits(model, torch.cat([ids, clean], 1))
    full_steered = _full_logits(model, torch.cat([ids, steered], 1), steerer, 5.0, start=last)
    assert torch.equal(full_clean[:, last:-1].argmax(-1), clean)
    assert torch.equal(full_steered[:, last:-1].argmax(-1), steered)


def test_sampled_continuations_share_their_noise_and_are_reproducible(model, sae):
    encoder, hp = sae
    steerer = Steerer.for_latent(model, encoder, hp, LATENT)
    ids = _prompts()
    runs = [generate_pair(model, ids, steerer, 1e-6, 8, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    # a negligible strength changes nothing: clean and steered drew the same noise
    assert torch.equal(runs[0][0], runs[0][1])
    other = generate_pair(model, ids, steerer, 1e-6, 8, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other[0], runs[0][0])


def test_tuning_hits_the_kl_target(model, sae):
    encoder, hp = sae
    steerer = Steerer.for_latent(model, encoder, hp, LATENT)
    ids = _prompts(n=6)
    for target in (0.5, 0.1):
        # the tiny model's residual stream is ~0.1 in norm: strengths of 1e-5 to 1 span it
        tuning = tune(model, ids, steerer, target, scale=1e-3, rel_tol=0.1)
        assert tuning.reached and abs(tuning.kl - target) <= 0.1 * target
        # the KL it reports is the KL of the full forward pass at that strength, at the last prompt position
        clean = torch.log_softmax(_full_logits(model, ids)[:, -1], -1)
        steered = torch.log_softmax(_full_logits(model, ids, steerer, tuning.strength, start=6)[:, -1], -1)
        assert float(kl_divergence(clean, steered).mean()) == pytest.approx(tuning.kl, rel=1e-3)
    assert tuning.evaluations <= 14


def test_strength_search_is_a_bisection_on_log_strength():
    calls = []

    def kl_at(s: float) -> float:
        calls.append(s)
        return 0.01 * s  # KL grows with strength; 0.5 at s = 50

    t = tune_strength(kl_at, 0.5, scale=2.0, log10_range=(-2.0, 3.0), rel_tol=0.01)
    assert t.reached and t.strength == pytest.approx(50, rel=0.02) and t.kl == pytest.approx(0.5, rel=0.01)
    assert calls[:2] == [pytest.approx(2000.0), pytest.approx(0.02)]  # the ends first, then midpoints in log10
    assert calls[2] == pytest.approx(2.0 * 10**0.5)
    assert t.evaluations == len(calls) <= 14

    # a latent too weak to reach the target: the strongest strength, flagged
    weak = tune_strength(lambda s: 1e-4 * math.log1p(s), 0.5, scale=1.0)
    assert not weak.reached and weak.strength == pytest.approx(1000.0) and weak.evaluations == 1
    with pytest.raises(ValueError, match="positive"):
        tune_strength(kl_at, 0.0)
