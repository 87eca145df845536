"""Steering the subject model along one latent, and measuring how far that moves its predictions.

Two ways to push latent i by a strength s (`method`):

- "encode_decode": at the hookpoint, encode the activation, add s to latent i, decode, and add
  back the reconstruction error: x' = decode(z + s·e_i) + (x - decode(z)). This is the intervention
  as the paper defines it. For neurons the dictionary is the neuron basis (decoding is the
  identity), so it adds s to neuron i's activation at the input of the layer's down_proj.
- "direction": add s x decoder_direction(i) where the decoder writes: the hookpoint for an SAE, the
  module's output for a transcoder, the output of down_proj for neurons.

"auto" (the default) is encode_decode, except for dictionaries with no encoder path there: a
transcoder's encoder reads the module's input and its decoder writes the output, so there is no one
place to encode, bump and decode, and its decoder direction is added to the module's output.

With a linear decoder and no run-time input normalisation the two methods are the same edit,
decode(z + s·e_i) - decode(z) = s·W_dec[i], which tests/subjects/test_steering.py checks; under SAELens's
`layer_norm` or `constant_norm_rescale` encode_decode also scales the direction by each token's
input statistics, as SAELens's own decode does. encode_decode is used whenever it is defined, so
the code does what the definition says rather than rely on the identity.

Positions: a `Steerer` edits, in each forward call made while it is active, the positions from
`start` on. Generation here prefills the prompt up to its second-to-last token without steering,
then feeds the last prompt token and each generated token one call at a time (KV cache), all
steered: so exactly the last prompt position and every generated position are steered.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from autointerp.errors import AutointerpError
from autointerp.subjects.dictionaries import Encoder
from autointerp.subjects.hookpoints import Hookpoint, Side, base_model

Method = Literal["auto", "encode_decode", "direction"]
METHODS = ("auto", "encode_decode", "direction")
Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [n, d] float32, strengths [n]) -> edited x


class SteeringError(AutointerpError):
    """A latent that cannot be steered the way asked; the message says why and what would work."""


@dataclass(frozen=True)
class Site:
    """Where an edit is applied: a module under the base model, and which side of it."""

    module_path: str
    side: Side


def steering_edit(encoder: Encoder, hookpoint: Hookpoint, latent: int, method: Method = "auto") -> tuple[Site, Edit]:
    """The site and the edit that push `latent` by a strength (see the module docstring)."""
    if not 0 <= latent < encoder.num_latents:
        raise SteeringError(f"latent {latent} is out of range: {encoder.name} has {encoder.num_latents} latents")
    if method not in METHODS:
        raise SteeringError(f"unknown steering method {method!r}; valid: {list(METHODS)}")
    if method == "auto":
        no_encoder_path = encoder.transcoder or (encoder.kind != "neurons" and encoder.W_enc is None)
        method = "direction" if no_encoder_path else "encode_decode"
    if method == "encode_decode":
        if encoder.transcoder:
            raise SteeringError(
                f"{encoder.name} is a transcoder: it encodes its module's input and decodes to the module's "
                "output, so there is no one place to encode, bump and decode; use method 'direction' (the default "
                "for transcoders), which adds the decoder direction to the module's output"
            )
        if encoder.kind != "neurons" and (encoder.W_enc is None or encoder.W_dec is None):
            raise SteeringError(f"{encoder.name} has no encoder or decoder weights; use method 'direction'")

        def encode_decode(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            z = encoder.encode(x)
            bumped = z.clone()
            bumped[:, latent] += s
            error = x - encoder.decode(z, x)
            return encoder.decode(bumped, x) + error

        return Site(hookpoint.module_path, hookpoint.side), encode_decode

    direction = encoder.decoder_direction(latent)
    if direction is None:
        raise SteeringError(f"{encoder.name} has no decoder directions; steer with method 'encode_decode'")
    direction = direction.float()
    # an SAE writes where it reads; a transcoder (and the neuron basis, through down_proj) writes the output
    writes_output = encoder.transcoder or encoder.kind == "neurons"
    site = Site(hookpoint.module_path, "output" if writes_output else hookpoint.side)

    def add_direction(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != direction.shape[-1]:
            raise SteeringError(
                f"the decoder direction of {encoder.name} has width {direction.shape[-1]}, but "
                f"{site.side} of {site.module_path} has width {x.shape[-1]}"
            )
        return x + s[:, None] * direction.to(x.device)

    return site, add_direction


class Steerer:
    """Applies an edit at its site while active, with one strength per batch row (0 leaves a row alone)."""

    def __init__(self, model: nn.Module, site: Site, edit: Edit):
        self.model = model
        self.site = site
        self.edit = edit
        self.module = base_model(model).get_submodule(site.module_path)

    @classmethod
    def for_latent(
        cls, model: nn.Module, encoder: Encoder, hookpoint: Hookpoint, latent: int, method: Method = "auto"
    ) -> Steerer:
        site, edit = steering_edit(encoder, hookpoint, latent, method)
        return cls(model, site, edit)

    def _apply(self, x: torch.Tensor, strengths: torch.Tensor, start: int) -> torch.Tensor:
        if x.shape[0] != strengths.shape[0]:
            raise SteeringError(f"{strengths.shape[0]} strengths for a batch of {x.shape[0]} rows")
        rows = torch.nonzero(strengths != 0).flatten()
        if rows.numel() == 0 or start >= x.shape[1]:
            return x
        part = x[rows, start:]  # [r, positions, d]
        s = strengths[rows].float().repeat_interleave(part.shape[1])
        edited = self.edit(part.reshape(-1, part.shape[-1]).float(), s).reshape(part.shape)
        out = x.clone()
        out[rows, start:] = edited.to(x.dtype)
        return out

    @contextlib.contextmanager
    def __call__(self, strengths: torch.Tensor, start: int = 0) -> Iterator[None]:
        """Steer the rows of every forward call in the block, at positions >= `start` of that call."""
        strengths = strengths.detach()

        def on_output(_module: nn.Module, _args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (self._apply(output[0], strengths, start), *output[1:])
            return self._apply(output, strengths, start)

        def on_input(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                return (self._apply(args[0], strengths, start), *args[1:]), kwargs
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": self._apply(kwargs["hidden_states"], strengths, start)}
            raise SteeringError(f"cannot find the input of {self.site.module_path} to steer")

        if self.site.side == "output":
            handle = self.module.register_forward_hook(on_output)
        else:
            handle = self.module.register_forward_pre_hook(on_input, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


# --- forward passes with a KV cache, across transformers versions ---------------------------------


def _params(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def forward_last(model: nn.Module, ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
    """Logits at the last position of `ids` (float32, [batch, vocab]) and the updated KV cache."""
    params = _params(model)
    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
    if cache is not None:
        kwargs["cache" if "cache" in params else "past_key_values"] = cache  # transformers 5 renamed it
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    new_cache = out.get("cache")
    if new_cache is None:
        new_cache = out.get("past_key_values")
    return out.logits[:, -1].float(), new_cache


@torch.inference_mode()
def prefill(model: nn.Module, ids: torch.Tensor) -> Any:
    """The KV cache of every prompt token but the last (None for one-token prompts): the unsteered part."""
    if ids.shape[1] < 2:
        return None
    return forward_last(model, ids[:, :-1])[1]


@torch.inference_mode()
def last_logprobs(
    model: nn.Module,
    ids: torch.Tensor,
    prefix: Any,
    steerer: Steerer | None = None,
    strengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token log-probabilities after each prompt, the last prompt position steered if asked."""
    cache = copy.deepcopy(prefix)  # the forward pass appends to the cache; keep the prefix reusable
    block = steerer(strengths) if steerer is not None and strengths is not None else contextlib.nullcontext()
    with block:
        logits, _ = forward_last(model, ids[:, -1:] if prefix is not None else ids, cache)
    return torch.log_softmax(logits, dim=-1)


def kl_divergence(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities [batch, vocab]."""
    return (p_log.exp() * (p_log - q_log)).sum(-1).clamp_min(0.0)


@dataclass
class Tuning:
    strength: float
    kl: float
    evaluations: int  # batched forward passes spent searching
    reached: bool  # the KL is within the tolerance of the target


def tune_strength(
    kl_at: Callable[[float], float],
    target: float,
    *,
    scale: float = 1.0,
    log10_range: tuple[float, float] = (-2.0, 3.0),
    max_steps: int = 12,
    rel_tol: float = 0.1,
) -> Tuning:
    """Binary search on log10(strength / scale) for a strength whose KL is within rel_tol of `target`.

    KL grows with strength for all but pathological latents; if even the largest strength in range
    stays below the target (or the smallest overshoots it), that end is returned with `reached`
    False, and the achieved KL says how far off it is.
    """
    if target <= 0:
        raise ValueError(f"the KL target must be positive, got {target}")
    lo, hi = log10_range
    if not lo < hi:
        raise ValueError(f"log10 strength range must be increasing, got {log10_range}")
    seen: list[tuple[float, float]] = []  # (strength, kl)

    def evaluate(u: float) -> float:
        strength = scale * 10.0**u
        kl = float(kl_at(strength))
        seen.append((strength, kl if math.isfinite(kl) else math.inf))
        return seen[-1][1]

    def close(kl: float) -> bool:
        return abs(kl - target) <= rel_tol * target

    def result() -> Tuning:
        strength, kl = min(seen, key=lambda sk: abs(sk[1] - target))
        return Tuning(strength=strength, kl=kl, evaluations=len(seen), reached=close(kl))

    kl_hi = evaluate(hi)
    if close(kl_hi) or kl_hi < target:
        return result()
    kl_lo = evaluate(lo)
    if close(kl_lo) or kl_lo > target:
        return result()
    for _ in range(max_steps):
        mid = (lo + hi) / 2
        kl = evaluate(mid)
        if close(kl):
            break
        if kl < target:
            lo = mid
        else:
            hi = mid
    return result()


@torch.inference_mode()
def tune(
    model: nn.Module,
    ids: torch.Tensor,
    steerer: Steerer,
    target: float,
    *,
    scale: float,
    log10_range: tuple[float, float] = (-2.0, 3.0),
    max_steps: int = 12,
    rel_tol: float = 0.1,
) -> Tuning:
    """The strength at which the mean next-token KL(clean || steered) over the prompts hits `target`.

    The prompt prefixes are run once; each strength tried costs one batched single-token pass.
    """
    prefix = prefill(model, ids)
    clean = last_logprobs(model, ids, prefix)
    rows = ids.shape[0]

    def kl_at(strength: float) -> float:
        strengths = torch.full((rows,), strength, device=ids.device)
        steered = last_logprobs(model, ids, prefix, steerer, strengths)
        return float(kl_divergence(clean, steered).mean())

    return tune_strength(kl_at, target, scale=scale, log10_range=log10_range, max_steps=max_steps, rel_tol=rel_tol)


@torch.inference_mode()
def generate_pair(
    model: nn.Module,
    ids: torch.Tensor,
    steerer: Steerer,
    strength: float,
    n_tokens: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue each prompt twice, clean and steered, `n_tokens` each: ([batch, n] clean, [batch, n] steered).

    Both runs share one batch and the same sampling noise (Gumbel-max with one draw per prompt and
    step), so the two continuations of a prompt differ only where steering changed the model's
    choice. temperature 0 is greedy.
    """
    rows = ids.shape[0]
    both = torch.cat([ids, ids])
    strengths = torch.cat([torch.zeros(rows), torch.full((rows,), float(strength))]).to(ids.device)
    cache = prefill(model, both)
    step = both[:, -1:] if cache is not None else both
    out: list[torch.Tensor] = []
    with steerer(strengths):
        for _ in range(n_tokens):
            logits, cache = forward_last(model, step, cache)
            if temperature > 0:
                u = torch.rand((rows, logits.shape[-1]), generator=generator).clamp_(1e-10, 1 - 1e-10)
                gumbel = -torch.log(-torch.log(u)).to(logits.device)
                logits = logits / temperature + torch.cat([gumbel, gumbel])
            step = logits.argmax(-1, keepdim=True)
            out.append(step)
    generated = torch.cat(out, dim=1) if out else both[:, :0]
    return generated[:rows], generated[rows:]
