"""Per-token activations for the latent pages, read back from the run's activation cache.

results.parquet keeps only what the judge saw as text; the activations behind it live in the
cache. The windows the explainer saw are the ones its row in explanations.jsonl lists (never a
replay of the sampler, which would show other windows if the sampling code or settings changed
since), and any judged window is read back by its index. A folder whose cache was deleted (it is
the big part of a run) still gets a report, without the shading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from autointerp.cache.store import CacheError, HookpointCaches
from autointerp.config import RunConfig
from autointerp.errors import AutointerpError
from autointerp.records import Example, ExplanationRow, LatentId, RowError
from autointerp.report.data import ReportError
from autointerp.results import RunFiles
from autointerp.sampling import TokenDecoder, read_example, token_decoder


@dataclass
class Contexts:
    """Where the pages get activations from: the caches (one per hookpoint) and the tokenizer (None, with
    the `reason`, when they cannot be had), and each latent's logged explanation row."""

    caches: HookpointCaches | None
    decode: TokenDecoder | None
    rows: dict[LatentId, ExplanationRow] = field(default_factory=dict)
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.caches is not None and self.decode is not None

    def _unit(self, latent: int, hookpoint: str | None) -> LatentId:
        if hookpoint is None:
            only = {u.hookpoint for u in self.rows} | set(self.caches or ())
            hookpoint = next(iter(only)) if len(only) == 1 else ""
        return LatentId(hookpoint, int(latent))

    def explainer_examples(self, latent: int, hookpoint: str | None = None) -> list[Example] | None:
        """The activating examples the explainer was shown, as logged; None when they are not known
        (no cache, or no windows logged: see `missing_reason`)."""
        unit = self._unit(latent, hookpoint)
        row = self.rows.get(unit)
        if not self.available or row is None or row.train_windows is None:
            return None
        quantiles = row.train_quantiles or [-1] * len(row.train_windows)
        examples = [
            self.example(w, unit.index, q, unit.hookpoint) for w, q in zip(row.train_windows, quantiles, strict=True)
        ]
        return [e for e in examples if e is not None and e.activating]  # not the contrastive's silent ones

    def missing_reason(self, latent: int, hookpoint: str | None = None) -> str:
        """Why `explainer_examples` has none for this latent, as a sentence."""
        if not self.available:
            return f"Per-token activations cannot be shown: {self.reason}"
        row = self.rows.get(self._unit(latent, hookpoint))
        why = "the windows it saw were not logged"
        if row is None:
            why = "no explanation of this latent was logged"
        elif row.source is not None:
            why = "the explanation was imported, and the examples its explainer saw are not known"
        elif row.status == "skipped":
            why = "the latent fires too rarely for a record, so no explainer saw it"
        return f"The explainer's examples cannot be shown: {why}"

    def example(
        self, window: int | None, latent: int, quantile: int = -1, hookpoint: str | None = None
    ) -> Example | None:
        """The window with the latent's activations, or None for a window the cache does not hold."""
        if self.caches is None or self.decode is None or window is None:
            return None
        unit = self._unit(latent, hookpoint)
        if unit.hookpoint not in self.caches:
            return None
        cache = self.caches.open(unit.hookpoint)
        if not 0 <= unit.index < cache.num_latents or not 0 <= window < cache.meta.n_windows:
            return None
        return read_example(cache, self.decode, window, unit.index, quantile)


def open_contexts(files: RunFiles, config: RunConfig | None, decode: TokenDecoder | None = None) -> Contexts:
    """The run's caches with the subject model's tokenizer (or the reason there is none), and its logged rows."""
    try:
        rows = files.explanations_by_unit()
    except RowError as e:
        raise ReportError(str(e)) from None
    try:
        caches = HookpointCaches(files.cache)
        meta = caches.metas[caches.hookpoints[0]]
    except (CacheError, OSError) as e:
        return Contexts(None, None, rows, str(e))
    if decode is None:
        if config is None:
            return Contexts(
                caches, None, rows, f"{files.config} is missing, so the subject model's tokenizer is unknown"
            )
        from autointerp.stages.subject_loading import load_tokenizer

        try:
            decode = token_decoder(load_tokenizer(config, meta))
        except (OSError, ValueError, ImportError, AutointerpError) as e:
            return Contexts(caches, None, rows, f"the tokenizer of {config.model!r} could not be loaded ({e})")
    return Contexts(caches, decode, rows)


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
