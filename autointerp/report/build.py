"""`autointerp report RUN`: write the static site for a run folder and return the index's path.

The site is plain files (index.html, latents/<index>.html) with inline CSS, SVG and a few lines of
script, so it opens from file:// with no network and can be copied anywhere as it is.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from autointerp.report.contexts import open_contexts
from autointerp.report.data import ReportError, RunData, agreement, load_run
from autointerp.report.pages import index_page, latent_page, row_href
from autointerp.sampling import TokenDecoder


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def build_report(
    run: Path, site: Path | None = None, *, decode: TokenDecoder | None = None, progress: bool = True
) -> Path:
    """Write the report of the run folder `run` into `site` (default RUN/report); returns index.html.

    `decode` turns token ids into display strings; by default the run's subject-model tokenizer
    (tests pass their own, for caches of made-up token ids).
    """
    data = load_run(Path(run))
    site = Path(site) if site is not None else data.files.folder / "report"
    try:
        return _build(data, site, decode, progress)
    except OSError as e:
        raise ReportError(f"cannot write the report into {site}: {e}") from None


def _build(data: RunData, site: Path, decode: TokenDecoder | None, progress: bool) -> Path:
    pages = site / "latents"
    pages.mkdir(parents=True, exist_ok=True)
    contexts = open_contexts(data.files, data.config, decode)

    judgments = data.judgments
    if len(judgments) and data.several_hookpoints:
        by_unit = {(str(hp), int(i)): g for (hp, i), g in judgments.groupby(["hookpoint", "latent"])}
    elif len(judgments):
        by_unit = {("", int(i)): g for i, g in judgments.groupby("latent")}
    else:
        by_unit = {}
    empty = judgments.iloc[0:0]
    rows = data.results.to_dict("records")
    for i, row in enumerate(tqdm(rows, desc="report", unit="latent", disable=not progress, dynamic_ncols=True)):
        key = (str(row.get("hookpoint")) if data.several_hookpoints else "", int(row["latent"]))
        html = latent_page(
            data,
            row,
            by_unit.get(key, empty),
            contexts,
            rows[i - 1] if i > 0 else None,
            rows[i + 1] if i + 1 < len(rows) else None,
        )
        _write(pages / row_href(data, row), html)
    index = site / "index.html"
    _write(index, index_page(data, agreement(data.results, data.scorers)))
    return index
