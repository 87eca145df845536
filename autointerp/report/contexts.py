"""Per-token activations for the latent pages, rebuilt from the run's activation cache.

results.parquet keeps only what the judge saw as text; the activations behind it live in the
cache. The sampler is deterministic given the run's seed, so rebuilding a latent's record gives the
very examples the explainer saw, and any judged window can be read back by its index. A folder
whose cache was deleted (it is the big part of a run) still gets a report, without the shading.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from autointerp.cache.store import ActivationCache, CacheError
from autointerp.config import RunConfig
from autointerp.records import Example, LatentRecord
from autointerp.results import RunFiles
from autointerp.sampling import NotEnoughExamples, Sampler, SamplingSettings, TokenDecoder, token_decoder


@dataclass
class Contexts:
    """Where the pages get activations from; `sampler` is None when they cannot, and `reason` says why."""

    sampler: Sampler | None
    reason: str = ""

    def record(self, latent: int) -> LatentRecord | None:
        if self.sampler is None or not 0 <= latent < self.sampler.cache.num_latents:
            return None
        try:
            return self.sampler.record(latent, negatives=False)  # pages show the activating examples only
        except NotEnoughExamples:
            return None

    def example(self, window: int | None, latent: int) -> Example | None:
        """The window with the latent's activations, or None for a window the cache does not hold."""
        if self.sampler is None or window is None or not 0 <= latent < self.sampler.cache.num_latents:
            return None
        if not 0 <= window < self.sampler.cache.meta.n_windows:
            return None
        return self.sampler.example(window, latent)


def open_contexts(files: RunFiles, config: RunConfig | None, decode: TokenDecoder | None = None) -> Contexts:
    """A sampler over the run's cache with the subject model's tokenizer, or the reason there is none."""
    try:
        cache = ActivationCache(files.cache)
    except (CacheError, OSError) as e:
        return Contexts(None, str(e))
    if decode is None:
        if config is None:
            return Contexts(None, f"{files.config} is missing, so the subject model's tokenizer is unknown")
        from autointerp import app

        try:
            decode = token_decoder(app.load_tokenizer(config, cache.meta))
        except (OSError, ValueError, ImportError) as e:
            return Contexts(None, f"the tokenizer of {config.model!r} could not be loaded ({e})")
    return Contexts(Sampler(cache, decode, config.sampling if config else SamplingSettings()))


def _shown(token: str) -> str:
    return escape(token.replace("\r", "").replace("\n", "↵"))


def shaded_tokens(example: Example, scale: float) -> str:
    """The example's tokens as HTML, each active token shaded by activation / `scale` (value on hover)."""
    scale = scale if scale > 0 else (example.max_activation or 1.0)
    spans = []
    for token, act in zip(example.str_tokens, example.activations, strict=True):
        if act > 0:
            alpha = 0.15 + 0.85 * min(1.0, act / scale)
            spans.append(f'<span class="tok on" style="--a:{alpha:.2f}" title="{act:.4g}">{_shown(token)}</span>')
        else:
            spans.append(f'<span class="tok">{_shown(token)}</span>')
    return '<span class="ctx">' + "".join(spans) + "</span>"
