"""A run as Neuronpedia takes it in: upload-batch bodies for its web app, and explanation rows for its bulk import.

Neuronpedia names a dictionary by a model id and a *source* (`<layer>-<source set>`, e.g.
`12-gemmascope-res-16k`), and a latent by its index as a string. Two ways in exist, and the export
writes both, so whoever runs the upload picks one:

- `upload-batch/batch-N.json`: bodies of its `POST /api/feature/upload-batch` route, one source and
  at most 128 features each (the route refuses more). A feature holds its `density` (share of tokens
  it fires on), its `activations` (token strings and per-token values; the quantile examples carry
  the bounds of their bin, `quantileMin`/`quantileMax`/`quantileFraction`) and its `explanations`
  (`text`, `methodName`, `modelName`). The route caps an explanation at 512 characters and an
  activation at 1024 tokens: longer explanations are left out (counted), longer windows are cut
  around their strongest token.
- `explanations/batch-N.jsonl.gz`: rows of its `Explanation` table (`modelId`, `layer`, `index`,
  `description`, `typeName`, `explanationModelName`, ...), the files its admin import reads. Our own
  importer reads the same files, so an export re-imports into a run of the same dictionary.

Only latents with a current "ok" explanation are exported: a Neuronpedia feature without one is what
its own pipeline already makes from the activations.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from autointerp.cache.store import ActivationCache, CacheError, HookpointCaches
from autointerp.config import load_config
from autointerp.explanation_sources import layer_key
from autointerp.exports import ExportError
from autointerp.records import ExplanationRow, LatentId
from autointerp.results import RunFiles
from autointerp.sampling import TokenDecoder, quantile_bins, read_example, token_decoder

BATCH_FEATURES = 128  # the upload-batch route's limit
MAX_EXPLANATION_CHARS = 512  # ditto, per explanation text
MAX_TOKENS = 1024  # ditto, per activation
EXPLANATION_ROWS_PER_FILE = 10_000
_SITE_TAG = {"resid": "res", "resid_mid": "res-mid", "mlp": "mlp", "attn": "att", None: "hook"}


@dataclass
class NeuronpediaOptions:
    """How the run's names map onto Neuronpedia's, and how many activations each feature carries."""

    model_id: str | None = None  # Neuronpedia's model id; default: the subject model's name, lowercased
    source_set: str = "autointerp"  # the source set; a hookpoint's source is `<layer>-<site>-<source_set>`
    sources: dict[str, str] = field(default_factory=dict)  # hookpoint -> source, overriding the default
    method_name: str | None = None  # an explanation type Neuronpedia knows; None leaves `methodName` out
    author_id: str = "autointerp"  # the `authorId` of the explanation rows (a user id of the instance)
    n_top: int = 20  # the strongest windows, without quantile bounds
    per_quantile: int = 5  # then this many windows of each activation quantile, with its bounds


@dataclass
class NeuronpediaExport:
    """What was written, for the printed summary."""

    out: Path
    features: int
    explanations: int
    batches: list[Path]
    explanation_files: list[Path]
    too_long: list[LatentId]  # explanations over the upload limit, left out
    sources: dict[str, str]  # hookpoint -> source

    def describe(self) -> str:
        lines = [
            f"wrote {self.features} features in {len(self.batches)} upload batches ({self.out / 'upload-batch'}) and "
            f"{self.explanations} explanation rows ({self.out / 'explanations'})",
            "  sources: " + ", ".join(f"{hp} -> {src}" for hp, src in self.sources.items()),
        ]
        if self.too_long:
            lines.append(
                f"  left out {len(self.too_long)} explanations longer than {MAX_EXPLANATION_CHARS} characters "
                "(Neuronpedia's limit): " + ", ".join(f"{u.hookpoint}:{u.index}" for u in self.too_long[:10])
            )
        return "\n".join(lines)


def default_source(hookpoint: str, source_set: str) -> str:
    """`<layer>-<site>-<set>`, the shape of Neuronpedia's source ids, read back to the same hookpoint by
    our importer's layer matching; a hookpoint with no block number keeps its own name."""
    key = layer_key(hookpoint)
    if key.layer is None:
        return f"{hookpoint.lower().replace('.', '-')}-{source_set}"
    return f"{key.layer}-{_SITE_TAG.get(key.site, 'hook')}-{source_set}"


def export_neuronpedia(folder: Path, out: Path, options: NeuronpediaOptions | None = None) -> NeuronpediaExport:
    """Write the run in `folder` into `out` (created; files of an earlier export there are replaced)."""
    options = options or NeuronpediaOptions()
    files = RunFiles(folder)
    if not files.config.exists():
        raise ExportError(f"{folder} is not a run folder: it has no config.json")
    config, resolved = load_config(files.config)
    try:
        caches = HookpointCaches(files.cache)
    except CacheError as e:
        raise ExportError(f"{e}; Neuronpedia features carry activations, which come from the run's cache") from None
    from autointerp.stages.subject_loading import load_tokenizer

    decode = token_decoder(load_tokenizer(config, caches.metas[caches.hookpoints[0]]))
    model_id = (options.model_id or _model_name(resolved.get("model") or config.model)).lower()
    sources = {hp: options.sources.get(hp) or default_source(hp, options.source_set) for hp in caches}
    rows = {u: r for u, r in files.explanations_by_unit().items() if r.status == "ok" and r.explanation}
    order = {hp: i for i, hp in enumerate(caches)}
    units = sorted((u for u in rows if u.hookpoint in caches), key=lambda u: (order[u.hookpoint], u.index))
    if not units:
        raise ExportError(f"{folder} has no explanations to export (run `autointerp explain` or `score` first)")

    for sub in ("upload-batch", "explanations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob("batch-*"):
            old.unlink()
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    batches: list[Path] = []
    n_features = 0
    explanation_rows: list[dict[str, Any]] = []
    too_long: list[LatentId] = []
    for hookpoint in caches:
        cache = caches.open(hookpoint)
        features = []
        for unit in (u for u in units if u.hookpoint == hookpoint):
            row = rows[unit]
            text = (row.explanation or "").strip()
            explanations = []
            if len(text) > MAX_EXPLANATION_CHARS:
                too_long.append(unit)
            else:
                explanations.append(_upload_explanation(text, row, options))
                explanation_rows.append(_explanation_row(text, row, unit, model_id, sources[hookpoint], options, now))
            activations = latent_activations(
                cache, decode, unit.index, options.n_top, options.per_quantile, config.sampling.n_quantiles
            )
            if not activations:
                continue  # the route needs at least one activation; a latent that never fired has none
            features.append(
                {
                    "index": unit.index,
                    "density": cache.stats(unit.index).frequency,
                    "activations": activations,
                    "explanations": explanations,
                }
            )
        for start in range(0, len(features), BATCH_FEATURES):
            path = out / "upload-batch" / f"batch-{len(batches)}.json"
            body = {
                "modelId": model_id,
                "source": sources[hookpoint],
                "features": features[start : start + BATCH_FEATURES],
            }
            path.write_text(json.dumps(body, ensure_ascii=False, allow_nan=False))
            batches.append(path)
        n_features += len(features)
    explanation_files = []
    for n, start in enumerate(range(0, len(explanation_rows), EXPLANATION_ROWS_PER_FILE)):
        path = out / "explanations" / f"batch-{n}.jsonl.gz"
        lines = "".join(
            json.dumps(r, ensure_ascii=False) + "\n"
            for r in explanation_rows[start : start + EXPLANATION_ROWS_PER_FILE]
        )
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
        explanation_files.append(path)
    return NeuronpediaExport(
        out=out,
        features=n_features,
        explanations=len(explanation_rows),
        batches=batches,
        explanation_files=explanation_files,
        too_long=too_long,
        sources=sources,
    )


def latent_activations(
    cache: ActivationCache, decode: TokenDecoder, latent: int, n_top: int, per_quantile: int, n_quantiles: int
) -> list[dict[str, Any]]:
    """The latent's strongest windows, then a few of each activation quantile of its sampled windows with
    the bin's bounds (the bins are those the sampler draws examples from: equal-count bins of the
    windows' maximum activation)."""
    out = []
    top, _ = cache.top_windows(latent)
    seen: set[int] = set()
    for w in top[:n_top]:
        seen.add(int(w))
        out.append(_activation(cache, decode, int(w), latent))
    pool = cache.sampled_windows(latent)
    if len(pool):
        maxima = np.array([cache.window_activations(int(w), latent).max() for w in pool])
        for windows in quantile_bins(pool, maxima, n_quantiles):
            in_bin = maxima[np.isin(pool, windows)]
            bounds = {
                "quantileMin": float(in_bin.min()),
                "quantileMax": float(in_bin.max()),
                "quantileFraction": len(windows) / len(pool),
            }
            picked = [int(w) for w in windows[::-1] if int(w) not in seen][:per_quantile]
            for w in picked:
                seen.add(w)
                out.append({**_activation(cache, decode, w, latent), **bounds})
    return out


def _activation(cache: ActivationCache, decode: TokenDecoder, window: int, latent: int) -> dict[str, Any]:
    example = read_example(cache, decode, window, latent)
    tokens, values = example.str_tokens, [float(v) for v in example.activations]
    if len(tokens) > MAX_TOKENS:
        peak = int(np.argmax(values))
        start = max(0, min(peak - MAX_TOKENS // 2, len(tokens) - MAX_TOKENS))
        tokens, values = tokens[start : start + MAX_TOKENS], values[start : start + MAX_TOKENS]
    return {"tokens": tokens, "values": [v if math.isfinite(v) else 0.0 for v in values]}


def _upload_explanation(text: str, row: ExplanationRow, options: NeuronpediaOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"text": text}
    if options.method_name:
        out["methodName"] = options.method_name.lower()
    if row.explainer_model:
        out["modelName"] = row.explainer_model.lower()
    return out


def _explanation_row(
    text: str,
    row: ExplanationRow,
    unit: LatentId,
    model_id: str,
    source: str,
    options: NeuronpediaOptions,
    now: str,
) -> dict[str, Any]:
    """A row of Neuronpedia's Explanation table; its id is stable, so a re-import replaces rather than adds."""
    ident = hashlib.sha1(f"{model_id}/{source}/{unit.index}/{text}".encode()).hexdigest()[:25]
    return {
        "id": f"ai{ident}",
        "modelId": model_id,
        "layer": source,
        "index": str(unit.index),
        "description": text,
        "authorId": options.author_id,
        "typeName": options.method_name.lower() if options.method_name else None,
        "explanationModelName": row.explainer_model.lower() if row.explainer_model else None,
        "scoreV1": 0,
        "createdAt": now,
        "updatedAt": now,
    }


def _model_name(model: str) -> str:
    """`google/gemma-2-2b` -> `gemma-2-2b`; a local folder -> its name."""
    return Path(str(model).rstrip("/")).name or str(model)
