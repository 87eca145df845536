"""Bringing existing explanations into a run folder, so the score stage scores them like its own.

The explanations are matched to the run's dictionaries (each hookpoint and its number of latents: an
entry goes to the hookpoint its layer name means, so a whole model's export fills a run of several),
then written into the run's `explanations.jsonl` as ordinary "ok" rows whose `explainer_model`
says where they came from ("imported:neuronpedia:gpt-4o-mini"). The score stage then builds each
latent's record with the run's own sampler, so the judge sees held-out examples of this run's
cache, exactly as for explanations the run made itself.

Nothing is dropped silently: every entry that is not imported (another layer, an index out of
range, a duplicate, an empty text, a latent too rare to score here) is listed with its reason in
`import_report.json` and counted in the printed summary; entries of other layers are counted per
layer rather than listed one by one, since an export of a whole model holds millions.

Importing again is idempotent: a latent whose current explanation already is the same text from
the same source gets no new row. A *different* text replaces the latent's explanation (the log is
append-only, so the newest row wins) and its old scores are superseded: the score stage re-scores a
latent whose stored scores were made for another text, and results.parquet never shows a score
beside an explanation it was not made for.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autointerp.cache.store import HookpointCaches, atomic_write_bytes, cache_complete, read_metas
from autointerp.config import RunConfig
from autointerp.errors import AutointerpError
from autointerp.explanation_sources import SourceEntry, iter_explanations, layer_key
from autointerp.records import ExplanationRow, LatentId
from autointerp.results import RunFiles, append_row

REPORT = "import_report.json"

# why an entry was not imported; the keys are the counts in the summary and the report
REASONS = {
    "unreadable": "unreadable",
    "not_selected": "not among --latents",
    "no_layer": "naming no layer (the run has several hookpoints)",
    "out_of_range": "out of range",
    "empty": "empty",
    "duplicate": "duplicate",
    "too_rare": "too rare to score",
}


class ExplanationImportError(AutointerpError):
    """Nothing in the file can be scored in this run, or the run cannot take imports; says why."""


@dataclass
class Unused:
    """An entry of the file that was not imported, and why."""

    origin: str
    layer: str | None
    latent: int | None
    kind: str  # a key of REASONS
    reason: str
    text: str | None = None


@dataclass
class LayerTally:
    """How many entries a layer of the file holds, and the range of their latent indices."""

    entries: int = 0
    latents: list[int] = field(default_factory=list)  # [lowest, highest] once any index was read

    def add(self, latent: int | None) -> None:
        self.entries += 1
        if latent is None:
            return
        low, high = self.latents or [latent, latent]
        self.latents = [min(low, latent), max(high, latent)]


@dataclass
class Matched:
    """The file's entries sorted into those for this run's dictionaries and the rest."""

    units: dict[LatentId, SourceEntry]  # by (hookpoint, latent), in file order
    unused: list[Unused]
    other_layers: dict[str, LayerTally]  # layers of the file that are none of the run's hookpoints
    this_layer: dict[str, LayerTally]  # the file's layer names taken as one of the run's hookpoints
    total: int = 0  # entries seen

    @property
    def accepted(self) -> dict[int, SourceEntry]:
        """The entries by latent index (in a run of one hookpoint, where the index names the latent)."""
        return {unit.index: e for unit, e in self.units.items()}


def match_entries(
    entries: Iterable[SourceEntry],
    *,
    hookpoint: str,
    num_latents: int,
    layer: str | None = None,
    latents: Iterable[int] | None = None,
) -> Matched:
    """Keep the entries that name a latent of this dictionary at this hookpoint; say why for the others.

    An entry fits the run when its layer is `layer` (as the file writes it) if one is given, else
    when its layer name means the same block and site as `hookpoint` (`layer_key`); an entry whose
    format names no layer fits any run. The first entry of a latent wins; later ones are duplicates.
    """
    return match_hookpoints(entries, {hookpoint: num_latents}, layer=layer, latents=latents)


def match_hookpoints(
    entries: Iterable[SourceEntry],
    sizes: dict[str, int],
    *,
    layer: str | None = None,
    latents: Iterable[int] | None = None,
) -> Matched:
    """`match_entries` for a run of one or several hookpoints (`sizes`: each one's number of latents).

    Each entry goes to the run's hookpoint its layer names: the one of that exact name, else the first
    whose block and site its name means. An entry whose format names no layer fits a run of one
    hookpoint, and none of a run of several; `layer` (a run of one hookpoint only) takes the file's
    entries of that layer, whatever it is called. `latents` selects indices at every hookpoint.
    """
    if layer and len(sizes) > 1:
        raise ExplanationImportError(
            "--explanations-layer takes one layer of the file for a run of one hookpoint; this run has "
            f"{len(sizes)} ({', '.join(sizes)}), and each entry is matched to the hookpoint its layer name means"
        )
    keys = {hp: layer_key(hp) for hp in sizes}
    only = next(iter(sizes)) if len(sizes) == 1 else None
    selected = set(latents) if latents is not None else None
    out = Matched(units={}, unused=[], other_layers={}, this_layer={})
    for e in entries:
        out.total += 1
        if e.problem or e.latent is None:
            out.unused.append(_unused(e, "unreadable", e.problem or "no latent index"))
            continue
        hookpoint = _hookpoint_of(e, keys, layer, only)
        if hookpoint is None and e.layer is None:
            out.unused.append(_unused(e, "no_layer", "the entry names no layer, and the run has several hookpoints"))
            continue
        if hookpoint is None:
            out.other_layers.setdefault(e.layer or "", LayerTally()).add(e.latent)
            continue
        out.this_layer.setdefault(e.layer or "", LayerTally()).add(e.latent)
        num_latents = sizes[hookpoint]
        unit = LatentId(hookpoint, e.latent)
        text = (e.text or "").strip()
        at = f" at {hookpoint}" if only is None else ""
        if selected is not None and e.latent not in selected:
            out.unused.append(_unused(e, "not_selected", f"latent {e.latent} is not among --latents"))
        elif not 0 <= e.latent < num_latents:
            out.unused.append(
                _unused(
                    e,
                    "out_of_range",
                    f"latent {e.latent} is out of range: the dictionary{at} has "
                    f"{num_latents} latents (0..{num_latents - 1})",
                )
            )
        elif not text:
            out.unused.append(_unused(e, "empty", "the explanation is empty"))
        elif unit in out.units:
            first = out.units[unit]
            same = " (same text)" if (first.text or "").strip() == text else ""
            out.unused.append(
                _unused(
                    e,
                    "duplicate",
                    f"latent {e.latent}{at} already has an explanation{same} from "
                    f"{first.origin}; the first one in the file is used",
                )
            )
        else:
            out.units[unit] = e
    return out


def _hookpoint_of(e: SourceEntry, keys: dict[str, Any], layer: str | None, only: str | None) -> str | None:
    """The run's hookpoint an entry is for, or None (another layer; or no layer named, in a run of several)."""
    if e.layer is None:
        return only
    if layer:
        return only if e.layer.strip() == layer.strip() else None
    name = e.layer.strip()
    if name in keys:
        return name
    key = layer_key(name)
    return next((hp for hp, run_key in keys.items() if key.fits(run_key)), None)


def _unused(e: SourceEntry, kind: str, reason: str) -> Unused:
    return Unused(e.origin, e.layer, e.latent, kind, reason, e.text)


@dataclass
class ImportOutcome:
    """What an import did, for the printed summary; `units` are the (hookpoint, latent) pairs to score."""

    source: str
    format: str
    hookpoint: str  # the run's hookpoints, comma-separated when it has several
    units: list[LatentId]
    new: int
    replaced: int
    unchanged: int
    left_out: dict[str, int]  # REASONS key -> count
    other_layers: dict[str, LayerTally]
    report: Path

    @property
    def latents(self) -> list[int]:
        """The latent indices imported (of every hookpoint)."""
        return sorted({u.index for u in self.units})

    def summary(self) -> str:
        lines = [
            f"imported {len(self.units)} explanations from {self.source} ({self.format}) for "
            f"{self.hookpoint}: {self.new} new, {self.replaced} replaced"
            + (" (their old scores are superseded)" if self.replaced else "")
            + f", {self.unchanged} unchanged"
        ]
        parts = [f"{n:,} {REASONS[k]}" for k, n in self.left_out.items() if n]
        if self.other_layers:
            n_other = sum(t.entries for t in self.other_layers.values())
            parts.append(f"{n_other:,} in other layers ({_layers_text(self.other_layers, limit=5)})")
        if parts:
            lines.append("  left out: " + ", ".join(parts))
            lines.append(f"  every entry left out, and why: {self.report}")
        return "\n".join(lines)


def model_label(fmt: str, model: str | None) -> str:
    """The `explainer_model` an imported explanation is recorded under."""
    if model and model.startswith("imported:"):
        return model  # re-importing one of our runs that had itself imported it
    return f"imported:{fmt}:{model}" if model else f"imported:{fmt}"


def import_explanations(
    files: RunFiles,
    config: RunConfig,
    path: Path,
    *,
    fmt: str = "auto",
    layer: str | None = None,
    latents: Iterable[int | str] | None = None,
    progress: bool = False,
    source: str | None = None,
) -> ImportOutcome:
    """Read `path`, match it to the run's dictionaries, write the new explanation rows and the report.
    `source` names where the file came from when that is not `path` (a Hub download: `ORG/NAME@COMMIT/PATH`)."""
    from autointerp.latent_choice import expand_latents

    metas = read_metas(files.cache)
    if metas is None or not cache_complete(files.cache):
        state = "no activation cache" if metas is None else "an unfinished activation cache"
        raise ExplanationImportError(
            f"{files.folder} has {state}; explanations are scored on a run's cache. Run `autointerp cache --out "
            f"{files.folder} --model ... --dictionary ... --hookpoint ...` for the dictionary the explanations "
            "describe, then score again"
        )
    caches = HookpointCaches(files.cache)
    sizes = {hp: caches.num_latents(hp) for hp in caches}
    path = Path(path).resolve()  # rows and report name the file wherever the command was run from
    fmt, entries = iter_explanations(path, fmt, progress=progress)
    origin = source or str(path)
    wanted = expand_latents(list(latents)) if latents is not None else None
    matched = match_hookpoints(entries, sizes, layer=layer, latents=wanted)
    if not matched.total:
        raise ExplanationImportError(f"{path} ({fmt}) holds no explanations")
    min_examples = config.sampling.min_examples
    for unit, e in list(matched.units.items()):
        fire = int(caches.open(unit.hookpoint).state.fire_windows[unit.index])
        if fire < min_examples:
            del matched.units[unit]
            at = f" at {unit.hookpoint}" if len(sizes) > 1 else ""
            matched.unused.append(
                Unused(
                    e.origin,
                    e.layer,
                    unit.index,
                    "too_rare",
                    f"latent {unit.index}{at} fires in {fire} windows of this run's cache, fewer than "
                    f"min_examples={min_examples}: too few examples to score it",
                    e.text,
                )
            )

    report_path = files.folder / REPORT
    left_out = Counter(u.kind for u in matched.unused)
    hookpoints = ", ".join(sizes)
    base_report = {
        "source": origin,
        "format": fmt,
        "run_hookpoint": hookpoints,
        "run_num_latents": sum(sizes.values()),
        "run_hookpoints": sizes,
        "entries": matched.total,
        "left_out": {k: left_out.get(k, 0) for k in REASONS},
        "other_layers": {k: asdict(v) for k, v in matched.other_layers.items()},
        "unused": [asdict(u) for u in matched.unused],
    }
    if not matched.units:
        _write_report(report_path, {**base_report, "imported": [], "replaced": []})
        raise ExplanationImportError(_nothing_matched(origin, fmt, matched.total, matched, sizes, layer, report_path))

    existing = files.explanations_by_unit()
    new = unchanged = 0
    replaced: list[dict[str, Any]] = []
    order = {hp: i for i, hp in enumerate(sizes)}
    units = sorted(matched.units, key=lambda u: (order[u.hookpoint], u.index))
    for unit in units:
        e = matched.units[unit]
        text = (e.text or "").strip()
        label = model_label(fmt, e.explainer_model)
        old = existing.get(unit)
        if old and old.status == "ok":
            if old.explanation == text:
                unchanged += 1  # its scores still stand
                if old.explainer_model == label:
                    continue  # nothing new to record
            else:
                replaced.append(
                    {
                        "hookpoint": unit.hookpoint,
                        "latent": unit.index,
                        "old_explanation": old.explanation,
                        "old_explainer_model": old.explainer_model,
                        "new_explanation": text,
                    }
                )
        else:
            new += 1
        stats = caches.open(unit.hookpoint).stats(unit.index)
        append_row(
            files.explanations,
            ExplanationRow(
                latent=unit.index,
                hookpoint=unit.hookpoint,
                status="ok",
                explanation=text,
                explainer_model=label,
                frequency=stats.frequency,
                max_activation=stats.max_activation,
                fire_windows=stats.fire_windows,
                n_tokens=stats.n_tokens,
                source={
                    "format": fmt,
                    "file": origin,
                    "origin": e.origin,
                    "layer": e.layer,
                    "explainer_model": e.explainer_model,
                    **e.extra,
                },
            ),
        )
    imported: list[Any] = (
        [u.index for u in units] if len(sizes) == 1 else [{"hookpoint": u.hookpoint, "latent": u.index} for u in units]
    )
    _write_report(report_path, {**base_report, "imported": imported, "replaced": replaced})
    return ImportOutcome(
        source=origin,
        format=fmt,
        hookpoint=hookpoints,
        units=units,
        new=new,
        replaced=len(replaced),
        unchanged=unchanged,
        left_out=dict(left_out),
        other_layers=matched.other_layers,
        report=report_path,
    )


def _write_report(path: Path, report: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(report, indent=1, ensure_ascii=False).encode())


def _layers_text(layers: dict[str, LayerTally], limit: int = 10) -> str:
    ranked = sorted(layers.items(), key=lambda kv: (-kv[1].entries, kv[0]))
    parts = []
    for name, tally in ranked[:limit]:
        span = ""
        if tally.latents:
            low, high = tally.latents
            span = f", latent {low}" if low == high else f", latents {low}..{high}"
        parts.append(f"{name or '(no layer)'}: {tally.entries:,}{span}")
    if len(ranked) > limit:
        parts.append(f"and {len(ranked) - limit} more layers")
    return "; ".join(parts)


def _nothing_matched(
    path: str, fmt: str, n: int, matched: Matched, sizes: dict[str, int], layer: str | None, report: Path
) -> str:
    if len(sizes) == 1:
        ((hookpoint, num_latents),) = sizes.items()
        run = (
            f"the run's dictionary reads {hookpoint} ({layer_key(hookpoint)}) and has {num_latents:,} latents "
            f"(0..{num_latents - 1})"
        )
    else:
        run = "the run's dictionaries read " + ", ".join(
            f"{hp} ({layer_key(hp)}, {n_latents:,} latents)" for hp, n_latents in sizes.items()
        )
    lines = [f"none of the {n:,} explanations in {path} ({fmt}) can be scored in this run: {run}."]
    if matched.this_layer:
        counts = Counter(u.kind for u in matched.unused)
        why = ", ".join(f"{c:,} {REASONS[k]}" for k, c in counts.items())
        lines.append(f"The file's entries for this layer ({_layers_text(matched.this_layer)}): {why}.")
    if matched.other_layers:
        lines.append(f"The file holds other layers: {_layers_text(matched.other_layers)}.")
        if layer is None and len(sizes) == 1:
            lines.append("If one of them is this run's layer under another name, pass it as --explanations-layer.")
    elif not matched.this_layer:
        counts = Counter(u.kind for u in matched.unused)
        lines.append("No entry could be read: " + ", ".join(f"{c:,} {REASONS[k]}" for k, c in counts.items()) + ".")
    lines.append(f"Every entry and why it was left out: {report}")
    return " ".join(lines)
