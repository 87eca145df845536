"""The report's two kinds of page: the index (distributions, agreement, latent table) and one per latent.

Page structure lives in the template files beside this module; this module builds the fragments
that go into them. Everything that came from the corpus, the explainer or the judge goes through
`html.escape` here, once, so no text in a run can add markup or script to a page.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from autointerp.prompting import format_plain, render
from autointerp.records import Example
from autointerp.report.contexts import Contexts, shaded_tokens
from autointerp.report.data import Agreement, RunData, ScorerColumns
from autointerp.report.svg import Point, Series, histogram, lines, scatter
from autointerp.version import __version__

TEMPLATES = Path(__file__).with_name("templates")


@functools.cache
def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def page(*, title: str, run: str, home: str, body: str) -> str:
    return render(
        template("base.html"),
        title=escape(title),
        run=escape(run),
        home=escape(home),
        body=body,
        style=template("style.css"),
        script=template("sort.js"),
        version=escape(__version__),
    )


def latent_href(latent: int, hookpoint: str | None = None) -> str:
    """The page of a latent: `17.html`, or in a run of several hookpoints `layers.4--17.html`."""
    if hookpoint is None:
        return f"{int(latent)}.html"
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', hookpoint)}--{int(latent)}.html"


def row_href(data: RunData, row: Any, latent: Any = None, hookpoint: Any = None) -> str:
    """The page of a results row (or of `latent` at `hookpoint`, e.g. a control's donor)."""
    latent = row["latent"] if latent is None else latent
    if not data.several_hookpoints:
        return latent_href(latent)
    return latent_href(latent, str(row.get("hookpoint") if hookpoint is None else hookpoint))


def latent_name(data: RunData, row: Any, latent: Any = None, hookpoint: Any = None) -> str:
    """`latent 17`, or in a run of several hookpoints `latent 17 at layers.4`."""
    latent = row["latent"] if latent is None else latent
    if not data.several_hookpoints:
        return f"latent {int(latent)}"
    return f"latent {int(latent)} at {row.get('hookpoint') if hookpoint is None else hookpoint}"


# ---- small formatting helpers (all return HTML-safe strings) ----


def missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def num(v: Any, digits: int = 3) -> str:
    """A value for display: counts as integers with separators, anything else with `digits` decimals."""
    if missing(v):
        return "—"
    if isinstance(v, numbers.Integral):
        return f"{int(v):,}"
    return f"{float(v):.{digits}f}"


def percent(v: Any) -> str:
    return "—" if missing(v) else f"{100 * float(v):.3g}%"


def sort_value(v: Any) -> str:
    return "" if missing(v) else f"{float(v):.6g}"


def td_num(v: Any, text: str | None = None) -> str:
    return f'<td class="num" data-v="{sort_value(v)}">{text if text is not None else num(v)}</td>'


def status_badge(status: Any) -> str:
    status = "missing" if missing(status) else str(status)
    kind = {"ok": " ok", "skipped": ""}.get(status, " bad")
    return f'<span class="status{kind}">{escape(status)}</span>'


def facts(pairs: Iterable[tuple[str, Any]]) -> str:
    return "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in pairs if not missing(v) and v != "")


def distinct(df: pd.DataFrame, column: str) -> str:
    if column not in df:
        return ""
    return ", ".join(sorted({str(v) for v in df[column].dropna().unique()}))


# ---- index ----


def _run_facts(data: RunData) -> str:
    r = data.results
    resolved = data.info.get("resolved", {})
    env = data.info.get("environment", {})
    counts = r["status"].fillna("missing").value_counts()
    judges = ", ".join(
        sorted(
            {str(v) for s in data.scorers if s.column("judge_model") in r for v in r[s.column("judge_model")].dropna()}
        )
    )
    return facts(
        [
            ("model", resolved.get("model") or distinct(r, "model")),
            ("dictionary", resolved.get("dictionary") or distinct(r, "dictionary")),
            ("hookpoint", resolved.get("hookpoint") or distinct(r, "hookpoint")),
            ("tokens cached", f"{resolved['n_tokens']:,}" if resolved.get("n_tokens") else None),
            ("explainer", distinct(r, "explainer_model")),
            ("judge", judges),
            ("scorers", ", ".join(s.name for s in data.scorers) or "none"),
            ("latents", f"{len(r)} (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"),
            ("autointerp", env.get("autointerp")),
            ("prompts sha256", env.get("prompts_sha256")),
        ]
    )


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _values(data: RunData, column: str | None) -> pd.Series:
    return (
        data.results[column].dropna() if column is not None and column in data.results else pd.Series([], dtype=float)
    )


def histograms(data: RunData) -> str:
    figures = []
    for s in data.scorers:
        for metric in s.shown:
            values = data.results[s.column(metric)].dropna()
            control = _values(data, s.control_column(metric))
            name = f"{s.name} {metric}"
            if values.empty:
                continue
            svg = histogram(values.tolist(), x_label=metric, title=name, control=control.tolist() or None)
            beside = f" (control {control.mean():.3f})" if len(control) else ""
            figures.append(
                _figure(
                    svg,
                    f"<b>{escape(name)}</b>: {len(values)} latents, mean {values.mean():.3f}{beside}, "
                    f"median {values.median():.3f}",
                )
            )
    return "".join(figures) or '<p class="missing">No latent has a score yet.</p>'


def _mean_and_error(values: pd.Series) -> tuple[float | None, float | None]:
    """The mean over latents and its standard error (None with fewer than two latents)."""
    if values.empty:
        return None, None
    error = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), error


def quantile_charts(data: RunData) -> str:
    """Per scorer with per-quantile accuracies: the mean over latents at each activation quantile,
    the same with shuffled labels beside it, and the accuracy on silent examples in the caption."""
    figures = []
    for s in data.scorers:
        if not s.quantiles:
            continue
        xs = [q for q, _ in s.quantiles]
        series = []
        for name, column in ((s.name, s.column), ("control", s.control_column)):
            stats = [_mean_and_error(_values(data, column(m))) for _, m in s.quantiles]
            if any(mean is not None for mean, _ in stats):
                series.append(Series(name, [m for m, _ in stats], [e for _, e in stats], control=name == "control"))
        if not series:
            continue
        n = max(len(_values(data, s.column(m))) for _, m in s.quantiles)
        silent, _ = _mean_and_error(_values(data, s.column("negative_accuracy")))
        silent_control, _ = _mean_and_error(_values(data, s.control_column("negative_accuracy")))
        on_silent = "" if silent is None else f"; on silent examples {silent:.3f}"
        if on_silent and silent_control is not None:
            on_silent += f" (control {silent_control:.3f})"
        svg = lines(
            xs,
            series,
            x_label="activation quantile (0 = weakest)",
            y_label="accuracy (share judged Yes)",
            title=f"{s.name} accuracy per activation quantile",
        )
        figures.append(
            _figure(
                svg,
                f"<b>{escape(s.name)}</b>: mean over {n} latents ± standard error{on_silent}",
            )
        )
    return "".join(figures) or '<p class="missing">No scorer in this run measures accuracy per quantile.</p>'


def agreement_table(rows: list[Agreement]) -> str:
    if not rows:
        return '<p class="missing">Fewer than two scorers with scores in this run: nothing to compare.</p>'
    head = (
        "<thead><tr><th>scorer</th><th>vs scorer</th><th>latents</th><th>Pearson r</th><th>Spearman ρ</th></tr></thead>"
    )
    body = "".join(
        f"<tr><td>{escape(a.a)} <span class='metrics-list'>{escape(a.metric_a)}</span></td>"
        f"<td>{escape(a.b)} <span class='metrics-list'>{escape(a.metric_b)}</span></td>"
        f"{td_num(a.n, str(a.n))}{td_num(a.pearson)}{td_num(a.spearman)}</tr>"
        for a in rows
    )
    return f'<table class="agreement">{head}<tbody>{body}</tbody></table>'


def scatters(data: RunData, rows: list[Agreement]) -> str:
    by_name = {s.name: s for s in data.scorers}
    figures = []
    for a in rows:
        if a.n == 0:
            continue
        ca, cb = by_name[a.a].column(a.metric_a), by_name[a.b].column(a.metric_b)
        both = data.results.dropna(subset=[ca, cb])
        points = [
            Point(
                float(row[ca]),
                float(row[cb]),
                f"{latent_name(data, row)}: {row['explanation'] or ''} ({row[ca]:.3f}, {row[cb]:.3f})",
                "latents/" + row_href(data, row),
            )
            for _, row in both.iterrows()
        ]
        x_label, y_label = f"{a.a} {a.metric_a}", f"{a.b} {a.metric_b}"
        svg = scatter(points, x_label=x_label, y_label=y_label, title=f"{x_label} vs {y_label}")
        r = "—" if a.pearson is None else f"{a.pearson:.2f}"
        rho = "—" if a.spearman is None else f"{a.spearman:.2f}"
        figures.append(_figure(svg, f"<b>{escape(a.a)} vs {escape(a.b)}</b>: {a.n} latents, r = {r}, ρ = {rho}"))
    return "".join(figures)


def _table_columns(data: RunData) -> list[tuple[ScorerColumns, str, str]]:
    """(scorer, heading, column) of the latent table's score columns: the shown metrics, then the
    headline's control where the run has one."""
    out = []
    for s in data.scorers:
        out += [(s, m, s.column(m)) for m in s.shown]
        control = s.control_column(s.headline) if s.headline else None
        if control is not None:
            out.append((s, f"{s.headline} control", control))
    return out


def latent_table(data: RunData) -> str:
    columns = _table_columns(data)
    metric_heads = "".join(
        f'<th data-first="descending">{escape(s.name)}<br><small>{escape(heading)}</small></th>'
        for s, heading, _ in columns
    )
    where = "<th>hookpoint</th>" if data.several_hookpoints else ""
    head = (
        f"<thead><tr>{where}<th>latent</th><th>explanation</th><th>status</th>"
        '<th data-first="descending">frequency</th><th data-first="descending">max act.</th>'
        f"{metric_heads}</tr></thead>"
    )
    rows = []
    for _, r in data.results.iterrows():
        expl = r.get("explanation")
        if missing(expl):  # a skipped or failed latent: say why instead
            expl_html = f'<span class="missing">{escape(str(r.get("error") or "")[:200])}</span>'
        else:
            expl_html = escape(str(expl))
        cells = [f"<td>{escape(str(r.get('hookpoint')))}</td>"] if data.several_hookpoints else []
        cells += [
            f'<td class="num" data-v="{int(r["latent"])}"><a href="latents/{row_href(data, r)}">'
            f"{int(r['latent'])}</a></td>",
            f'<td class="expl">{expl_html}</td>',
            f"<td>{status_badge(r.get('status'))}</td>",
            td_num(r.get("frequency"), percent(r.get("frequency"))),
            td_num(r.get("max_activation"), num(r.get("max_activation"), 2)),
        ]
        cells += [td_num(r.get(column)) for _, _, column in columns]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return head + "<tbody>" + "".join(rows) + "</tbody>"


def index_page(data: RunData, agreement_rows: list[Agreement]) -> str:
    body = render(
        template("index.html"),
        heading=escape(f"Run {data.files.folder.resolve().name}"),
        facts=_run_facts(data),
        histograms=histograms(data),
        quantiles=quantile_charts(data),
        agreement=agreement_table(agreement_rows),
        scatters=scatters(data, agreement_rows),
        table=latent_table(data),
    )
    return page(
        title=f"autointerp report: {data.files.folder.resolve().name}",
        run=str(data.files.folder),
        home="index.html",
        body=body,
    )


# ---- one latent ----


def _scores_table(data: RunData, row: dict[str, Any], scorers: list[ScorerColumns]) -> str:
    if not scorers:
        return '<p class="missing">No scorer ran in this run.</p>'
    head = (
        "<thead><tr><th>scorer</th><th>headline</th><th>control</th><th>other metrics</th><th>examples</th>"
        "<th>unreadable answers</th><th>judge</th></tr></thead>"
    )
    rows = []
    for s in scorers:
        headline = s.headline or (s.metrics[0] if s.metrics else None)
        value = row.get(s.column(headline)) if headline else None
        per_quantile = {m for _, m in s.quantiles}
        others = " · ".join(
            f"{escape(m)} {num(row.get(s.column(m)))}" + _control_value(row, s, m)
            for m in s.metrics
            if m != headline and m not in per_quantile
        )
        if s.quantiles:
            values = " · ".join(num(row.get(s.column(m)), 2) for _, m in s.quantiles)
            others += f"<br>accuracy per activation quantile, weakest first: {values}"
        judge = row.get(s.column("judge_model"))
        rows.append(
            f"<tr><td>{escape(s.name)}</td>"
            f"<td>{escape(headline or '')} <b>{num(value)}</b></td>"
            f"<td>{_control_cell(data, row, s, headline)}</td>"
            f'<td class="metrics-list">{others}</td>'
            f"{td_num(row.get(s.column('n')))}{td_num(row.get(s.column('n_failed')))}"
            f"<td>{'' if missing(judge) else escape(str(judge))}</td></tr>"
        )
    return f"<table>{head}<tbody>{''.join(rows)}</tbody></table>"


def _control_value(row: dict[str, Any], s: ScorerColumns, metric: str) -> str:
    column = s.control_column(metric)
    if column is None or missing(row.get(column)):
        return ""
    return f" (control {num(row.get(column))})"


def _donor(row: dict[str, Any], s: ScorerColumns) -> int | None:
    column = s.donor_column
    return None if column is None or missing(row.get(column)) else int(row[column])


def _donor_link(data: RunData, row: dict[str, Any], s: ScorerColumns, donor: int) -> str:
    """A link to the latent whose label a control scored (of another hookpoint, it may be)."""
    column = s.donor_hookpoint_column
    hookpoint = None if column is None or missing(row.get(column)) else str(row[column])
    name = latent_name(data, row, donor, hookpoint)
    return f'<a href="{row_href(data, row, donor, hookpoint)}">{escape(name)}</a>'


def _control_cell(data: RunData, row: dict[str, Any], s: ScorerColumns, metric: str | None) -> str:
    """The headline with another latent's label, and a link to that latent."""
    column = s.control_column(metric) if metric else None
    donor = _donor(row, s)
    if column is None or donor is None:
        return '<span class="missing">—</span>'
    return (
        f"<b>{num(row.get(column))}</b> <span class='control-note'>with the label of "
        f"{_donor_link(data, row, s, donor)}</span>"
    )


def _train_section(examples: list[Example] | None, scale: float, reason: str) -> str:
    if examples is None:
        return f'<p class="callout">{escape(reason)}.</p>'
    if not examples:
        return '<p class="missing">The explainer saw no examples of this latent.</p>'
    ordered = sorted(examples, key=lambda e: -e.max_activation)
    rows = "".join(
        f"<tr>{td_num(e.max_activation, num(e.max_activation, 2))}"
        f"{td_num(e.quantile, str(e.quantile)) if e.quantile >= 0 else td_num(None)}"
        f"<td>{shaded_tokens(e, scale)}</td></tr>"
        for e in ordered
    )
    return (
        '<table class="sortable"><thead><tr><th data-first="descending">max act.</th>'
        f'<th data-first="descending">quantile</th><th>context</th></tr></thead><tbody>{rows}</tbody></table>'
    )


VERDICT_ORDER = {"wrong": 0, "unreadable": 1, "right": 2}


def verdict(j: dict[str, Any]) -> str:
    if missing(j.get("prediction")):
        return "unreadable"
    return "right" if bool(j["prediction"]) == bool(j["activating"]) else "wrong"


def _judgment_row(j: dict[str, Any], example: Example | None, scale: float) -> str:
    v = verdict(j)
    mark = {"right": "✓ right", "wrong": "✗ wrong", "unreadable": "? unreadable"}[v]
    truth = (
        f"activating (q{j['quantile']})"
        if j["activating"] and not missing(j.get("quantile")) and int(j["quantile"]) >= 0
        else ("activating" if j["activating"] else "silent")
    )
    said = "—" if v == "unreadable" else ("Yes" if j["prediction"] else "No")
    text = "" if missing(j.get("text")) else str(j["text"])
    if example is not None:
        context = shaded_tokens(example, scale)
        if text and text != format_plain(example):
            context += f'<span class="shown">shown: {escape(text)}</span>'
    else:
        context = f'<span class="ctx">{escape(text)}</span>'
    answer = "" if missing(j.get("answer")) else escape(str(j["answer"]))
    if not missing(j.get("detail")) and j["detail"]:
        answer += f'<div class="detail">{escape(str(j["detail"]))}</div>'
    if not missing(j.get("error")) and j["error"]:
        answer += f'<div class="err">{escape(str(j["error"]))}</div>'
    return (
        f'<tr class="{v}"><td class="nowrap" data-v="{VERDICT_ORDER[v]}">{mark}</td>'
        f'<td class="nowrap">{escape(truth)}</td>'
        f"{td_num(j.get('max_activation'), num(j.get('max_activation'), 2))}<td>{said}</td>"
        f"{td_num(j.get('probability'))}<td>{context}</td><td>{answer}</td></tr>"
    )


def _judged_section(
    data: RunData,
    judgments: pd.DataFrame,
    row: dict[str, Any],
    contexts: Contexts,
    scale: float,
) -> str:
    scorers = data.scorers
    latent = int(row["latent"])
    hookpoint = None if missing(row.get("hookpoint")) else str(row["hookpoint"])
    if judgments.empty:
        return '<p class="missing">No judgments were recorded for this latent.</p>'
    parts = []
    if not contexts.available:
        parts.append(
            '<p class="callout">Without the activation cache, the excerpts are shown as the judge saw '
            "them, unshaded.</p>"
        )
    known = [s.name for s in scorers]
    names = known + sorted(set(judgments["scorer"]) - set(known))
    control = judgments["control"] if "control" in judgments else pd.Series(False, index=judgments.index)
    for name, is_control in ((n, c) for n in names for c in (False, True)):
        rows = [r for r in judgments[(judgments["scorer"] == name) & (control == is_control)].to_dict("records")]
        if not rows:
            continue
        for r in rows:
            r["_verdict"] = verdict(r)
        rows.sort(
            key=lambda r: (
                VERDICT_ORDER[r["_verdict"]],
                not r["activating"],
                -(0.0 if missing(r.get("max_activation")) else float(r["max_activation"])),
            )
        )
        counts = {k: sum(r["_verdict"] == k for r in rows) for k in VERDICT_ORDER}
        columns = next((s for s in scorers if s.name == name), None)
        score, title, why = "", escape(name), ""
        if columns and columns.headline:
            metric = columns.control_column(columns.headline) if is_control else columns.column(columns.headline)
            if metric is not None:
                score = f" · {escape(columns.headline)} {num(row.get(metric))}"
        if is_control:
            title += " · control"
            donor = _donor(row, columns) if columns else None
            label = row.get(columns.donor_label_column) if columns and columns.donor_label_column else None
            why = (
                "The same held-out examples, judged with another latent's label"
                + (f" ({_donor_link(data, row, columns, donor)}'s" if columns and donor is not None else " (")
                + (f": “{escape(str(label))}”)" if not missing(label) else ")")
                + ": how well a wrong label does on them. "
            )
        body = "".join(_judgment_row(r, contexts.example(_window(r), latent, hookpoint=hookpoint), scale) for r in rows)
        table = (
            '<table class="sortable judged"><thead><tr><th>verdict</th><th>truth</th>'
            '<th data-first="descending">max act.</th><th>judge said</th><th data-first="descending">P(Yes)</th>'
            f"<th>excerpt</th><th>answer</th></tr></thead><tbody>{body}</tbody></table>"
        )
        note = (
            f"<p class='note'>{why}{len(rows)} examples: {counts['right']} right, "
            f"{counts['wrong']} wrong, {counts['unreadable']} unreadable{score}</p>"
        )
        if is_control:  # folded: it is the reference, not what the page is about
            parts.append(f"<h3>{title}</h3>{note}<details><summary>show them</summary>{table}</details>")
        else:
            parts.append(f"<h3>{title}</h3>{note}{table}")
    return "".join(parts)


def _window(j: dict[str, Any]) -> int | None:
    w = j.get("window")
    return None if w is None or missing(w) else int(w)


def latent_page(
    data: RunData,
    row: dict[str, Any],
    judgments: pd.DataFrame,
    contexts: Contexts,
    prev_row: dict[str, Any] | None,
    next_row: dict[str, Any] | None,
) -> str:
    latent = int(row["latent"])
    hookpoint = "" if missing(row.get("hookpoint")) else str(row["hookpoint"])
    shown = contexts.explainer_examples(latent, hookpoint or None)
    scale = float(row["max_activation"]) if not missing(row.get("max_activation")) else 0.0
    expl = row.get("explanation")
    status = str(row.get("status") or "missing")
    status_html = ""
    if status != "ok":
        error = "" if missing(row.get("error")) else str(row["error"])
        status_html = f"<p>{status_badge(status)}</p>" + (
            f"<details><summary>why</summary><pre class='error'>{escape(error)}</pre></details>" if error else ""
        )
    reason = contexts.missing_reason(latent, hookpoint or None) if shown is None else ""
    pager = ['<a href="../index.html">← all latents</a>']
    if prev_row is not None:
        pager.append(f'<a href="{row_href(data, prev_row)}">← {escape(latent_name(data, prev_row))}</a>')
    if next_row is not None:
        pager.append(f'<a href="{row_href(data, next_row)}">{escape(latent_name(data, next_row))} →</a>')
    body = render(
        template("latent.html"),
        pager=" ".join(pager),
        heading=escape(f"Latent {latent}" + (f" at {hookpoint}" if hookpoint else "")),
        explanation=escape(str(expl)) if not missing(expl) else '<span class="missing">no explanation</span>',
        status=status_html,
        facts=facts(
            [
                ("frequency", percent(row.get("frequency"))),
                ("max activation", num(row.get("max_activation"), 3)),
                ("firing windows", num(row.get("fire_windows"))),
                ("explainer", row.get("explainer_model")),
            ]
        ),
        scores=_scores_table(data, row, data.scorers),
        train=_train_section(shown, scale, reason),
        judged=_judged_section(data, judgments, row, contexts, scale),
    )
    name = latent_name(data, row)
    return page(
        title=f"{name}: {'' if missing(expl) else expl}",
        run=str(data.files.folder),
        home="../index.html",
        body=body,
    )
