"""A run's labels and detection scores as SAEBench's autointerp eval results, one JSON file per hookpoint.

SAEBench writes `<release>_<sae id>_eval_results.json`: its run settings (`eval_config`), an id and
a time, the mean and spread of the per-latent score (`eval_result_metrics.autointerp`), the SAE's
config (`sae_cfg_dict`, whose `hook_name` says where it reads) and per latent, under
`eval_result_unstructured`, its explanation, the 1-based positions of the sequences the judge called
active (`predictions`), those that were (`correct seqs`) and the share it got right (`score`).

Its score is a detection score: the judge reads whole sequences, some active and some not, and says
which are. Ours of the same kind is the `detection` scorer's accuracy, taken here; where the run has
no detection score, `fuzzing` (the same question about marked tokens) is used, and the file says which
(`eval_config.autointerp_scorer`). A latent with an explanation but no finished score is left out of
the scores (SAEBench drops latents whose predictions could not be read) but keeps its explanation.
"""

from __future__ import annotations

import json
import re
import statistics
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autointerp.cache.store import read_metas
from autointerp.config import load_config
from autointerp.exports import ExportError
from autointerp.records import ScoreRow
from autointerp.results import RunFiles

SCORERS = ("detection", "fuzzing")  # the SAEBench-like scorers, preferred first


@dataclass
class SaebenchExport:
    """What was written, for the printed summary."""

    files: list[Path]
    latents: int
    scored: int
    scorer: str | None

    def describe(self) -> str:
        by = f" by {self.scorer} accuracy" if self.scorer else " (no detection or fuzzing scores: explanations only)"
        return (
            f"wrote {len(self.files)} SAEBench results files ({self.latents} latents, {self.scored} scored{by}): "
            + ", ".join(str(p) for p in self.files)
        )


def results_name(hookpoint: str, model: str) -> str:
    """The file name, in SAEBench's `<release>_<sae id>_eval_results.json` shape."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}_{hookpoint}").strip("-")
    return f"{safe}_eval_results.json"


def export_saebench(folder: Path, out: Path) -> SaebenchExport:
    """Write one results file per hookpoint of the run in `folder` into the folder `out`."""
    files = RunFiles(folder)
    if not files.config.exists():
        raise ExportError(f"{folder} is not a run folder: it has no config.json")
    config, resolved = load_config(files.config)
    explanations = {u: r for u, r in files.explanations_by_unit().items() if r.status == "ok" and r.explanation}
    if not explanations:
        raise ExportError(f"{folder} has no explanations to export (run `autointerp explain` or `score` first)")
    scores = files.current_scores(files.explanations_by_unit())
    scorer = next((s for s in SCORERS if any(k[1] == s and r.status == "ok" for k, r in scores.items())), None)
    metas = read_metas(files.cache) or {}
    hookpoints = list(dict.fromkeys([*metas, *(u.hookpoint for u in explanations)]))
    model = str(resolved.get("model") or config.model)
    out.mkdir(parents=True, exist_ok=True)
    written, n_latents, n_scored = [], 0, 0
    for hookpoint in hookpoints:
        units = sorted((u for u in explanations if u.hookpoint == hookpoint), key=lambda u: u.index)
        if not units:
            continue
        per_latent: dict[str, dict[str, Any]] = {}
        values = []
        for unit in units:
            entry: dict[str, Any] = {"latent": unit.index, "explanation": explanations[unit].explanation}
            row = scores.get((unit, scorer)) if scorer else None
            if row is not None and row.status == "ok" and _accuracy(row) is not None:
                entry.update(_predictions(row))
                values.append(entry["score"])
            entry["logs"] = ""
            per_latent[str(unit.index)] = entry
        meta = metas.get(hookpoint)
        mean = statistics.fmean(values) if values else None
        spread = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        result = {
            "eval_type_id": "autointerp",
            "eval_config": {
                "model_name": model,
                "override_latents": [u.index for u in units],
                "n_latents": len(units),
                "random_seed": config.sampling.seed,
                "scoring": scorer is not None,
                "autointerp_scorer": scorer,
                "judge": config.judge,
                "explainer": config.explainer,
            },
            "eval_id": str(uuid.uuid4()),
            "datetime_epoch_millis": int(datetime.now(timezone.utc).timestamp() * 1000),
            "eval_result_metrics": {"autointerp": {"autointerp_score": mean, "autointerp_std_dev": spread}},
            "eval_result_details": [],
            "sae_bench_commit_hash": None,
            "sae_lens_id": hookpoint,
            "sae_lens_release_id": str(resolved.get("dictionary") or config.dictionary),
            "sae_lens_version": None,
            "sae_cfg_dict": {
                "model_name": model,
                "hook_name": hookpoint,
                "d_sae": meta.num_latents if meta else None,
                "context_size": meta.ctx_len if meta else None,
            },
            "eval_result_unstructured": per_latent,
        }
        path = out / results_name(hookpoint, Path(model.rstrip("/")).name)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
        written.append(path)
        n_latents += len(units)
        n_scored += len(values)
    return SaebenchExport(files=written, latents=n_latents, scored=n_scored, scorer=scorer)


def _accuracy(row: ScoreRow) -> float | None:
    value = (row.metrics or {}).get("accuracy")
    return None if value is None else float(value)


def _predictions(row: ScoreRow) -> dict[str, Any]:
    """SAEBench's per-latent fields from our judgments: 1-based positions in the judged order."""
    judged = [j for j in row.judgments or [] if j.prediction is not None]
    return {
        "predictions": [i for i, j in enumerate(judged, 1) if j.prediction],
        "correct seqs": [i for i, j in enumerate(judged, 1) if j.activating],
        "score": _accuracy(row),
    }
