"""The static report: pages that show what the run holds, activations rebuilt from the cache, any
scorer's columns, text that cannot inject markup, and a site that a real browser renders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.report_fixtures import PAYLOAD, make_run
from transformers import AutoTokenizer

from autointerp.cache.store import ActivationCache
from autointerp.cli import main
from autointerp.config import load_config
from autointerp.report import ReportError, build_report
from autointerp.report.data import agreement, find_scorers
from autointerp.report.svg import histogram, ticks
from autointerp.results import append_row, read_explanations, read_jsonl
from autointerp.sampling import Sampler, token_decoder


class Elements(HTMLParser):
    """Tags with their attributes, and the page's text with entities decoded."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def count(self, tag: str, cls: str | None = None) -> int:
        return sum(t == tag and (cls is None or cls in (a.get("class") or "").split()) for t, a in self.tags)


def section(html: str, name: str) -> str:
    return re.search(rf'<section id="{name}">(.*?)</section>', html, re.DOTALL).group(1)


def contexts(html: str) -> list[tuple[str, list[float]]]:
    """Each shaded context on a page: its text, and the activation shown on each shaded token."""
    out = []
    for ctx in re.findall(r'<span class="ctx">((?:<span class="tok[^"]*"[^>]*>[^<]*</span>)*)</span>', html):
        text = unescape("".join(re.findall(r">([^<]*)</span>", ctx)))
        acts = [float(v) for v in re.findall(r'class="tok on"[^>]*title="([^"]+)"', ctx)]
        out.append((text, acts))
    return out


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("report") / "run", tiny_llama, latents=[0, 1, 2, 4, 5, 9, 13, 16])


@pytest.fixture(scope="module")
def site(run, tmp_path_factory) -> Path:
    index = build_report(run, tmp_path_factory.mktemp("site"), progress=False)
    return index.parent


@pytest.fixture(scope="module")
def results(run) -> pd.DataFrame:
    return pd.read_parquet(run / "results.parquet")


def test_index_lists_every_latent_with_its_headline_scores(site, results):
    html = (site / "index.html").read_text()
    table = section(html, "latent-table")
    assert table.count("<tr>") == len(results) + 1  # header + one per latent
    for _, row in results.iterrows():
        latent = int(row["latent"])
        assert f'href="latents/{latent}.html"' in table
        assert (site / "latents" / f"{latent}.html").exists()
        cells = re.search(rf'<tr><td class="num" data-v="{latent}">.*?</tr>', table).group(0)
        shown = [float(v) for v in re.findall(r'data-v="([^"]*)"', cells)[3:] if v]
        expected = [
            row[f"{scorer}_{c}"]
            for scorer in ("detection", "fuzzing")
            for c in ("balanced_accuracy", "auroc", "control_balanced_accuracy")  # the headline's control too
            if pd.notna(row[f"{scorer}_{c}"])
        ]
        assert shown == pytest.approx(expected, rel=1e-5)
    assert "<small>balanced_accuracy control</small>" in table
    # a histogram per scorer and shown metric, with its control in outline; a scatter for the one pair of
    # scorers; a chart of accuracy per activation quantile for each of the two Yes/No scorers
    distributions = section(html, "distributions")
    assert distributions.count("<svg") == 4 and distributions.count('class="bar control"') > 0
    control = results["detection_control_balanced_accuracy"].dropna()
    assert f"(control {control.mean():.3f})" in distributions
    assert section(html, "agreement").count("<svg") == 1
    assert section(html, "quantiles").count("<svg") == 2


def test_quantile_chart_shows_the_mean_accuracy_per_quantile(site, results):
    chart = section((site / "index.html").read_text(), "quantiles").split("</svg>")[0]
    drawn = {
        (name, int(q)): float(v) for name, q, v in re.findall(r"<title>(detection|control), (\d+): ([\d.]+)", chart)
    }
    quantiles = sorted(int(c.rsplit("_", 1)[1]) for c in results if c.startswith("detection_quantile_accuracy_"))
    assert quantiles == list(range(10))
    for q in quantiles:
        assert drawn["detection", q] == pytest.approx(results[f"detection_quantile_accuracy_{q}"].mean(), abs=1e-3)
        control = results[f"detection_control_quantile_accuracy_{q}"].mean()
        assert drawn["control", q] == pytest.approx(control, abs=1e-3)


def test_agreement_is_the_correlation_of_headline_metrics(site, results):
    both = results[["detection_balanced_accuracy", "fuzzing_balanced_accuracy"]].dropna()
    assert len(both) >= 4
    x, y = both.to_numpy().T
    pearson = float(np.corrcoef(x, y)[0, 1])
    spearman = float(np.corrcoef(pd.Series(x).rank(), pd.Series(y).rank())[0, 1])
    [a] = agreement(results, find_scorers(results, ["detection", "fuzzing"]))
    assert (a.a, a.b, a.n) == ("detection", "fuzzing", len(both))
    assert a.pearson == pytest.approx(pearson) and a.spearman == pytest.approx(spearman)
    html = section((site / "index.html").read_text(), "agreement")
    assert f">{pearson:.3f}<" in html and f">{spearman:.3f}<" in html


def test_latent_page_shades_the_windows_the_explainer_saw(run, site, results):
    """The record is rebuilt from the cache: the contexts are the logged train windows, with their activations."""
    config, _ = load_config(run / "config.json")
    from transformers import AutoTokenizer

    sampler = Sampler(
        ActivationCache(run / "cache"), token_decoder(AutoTokenizer.from_pretrained(run / "subject")), config.sampling
    )
    logged = {r["latent"]: r for r in read_jsonl(run / "explanations.jsonl")}
    for latent in results.loc[results["status"] == "ok", "latent"]:
        html = (site / "latents" / f"{latent}.html").read_text()
        assert (
            unescape(re.search(r'<blockquote class="explanation">(.*?)</blockquote>', html).group(1))
            == logged[latent]["explanation"]
        )
        shown = contexts(section(html, "train"))
        expected = [sampler.example(w, int(latent)) for w in logged[latent]["train_windows"]]
        expected = [e for e in expected if e.activating]
        assert len(shown) == len(expected) > 0
        by_text = {e.text: e for e in expected}
        for text, acts in shown:
            example = by_text[text]
            assert acts == pytest.approx([a for a in example.activations if a > 0], rel=1e-3)


def test_latent_page_shows_the_logged_windows_never_a_replay(run, tmp_path):
    """A new sampling seed in config.json would make a replay of the sampler draw other windows; the page
    shows the windows the latent's (newest) row lists, with their logged quantiles."""
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report"))
    config = json.loads((copy / "config.json").read_text())
    config["config"]["sampling"]["seed"] = 12345
    (copy / "config.json").write_text(json.dumps(config))
    rows = {r.latent: r for r in read_explanations(copy / "explanations.jsonl")}
    ok, imported = [r for r in rows.values() if r.status == "ok"][:2]
    assert len(ok.train_quantiles) == len(ok.train_windows) == ok.n_train + ok.train_quantiles.count(-1)
    kept = [(w, q) for w, q in zip(ok.train_windows, ok.train_quantiles, strict=True) if q >= 0][:3]
    append_row(
        copy / "explanations.jsonl",
        replace(ok, train_windows=[w for w, _ in kept], train_quantiles=[q for _, q in kept]),
    )
    append_row(
        copy / "explanations.jsonl",
        replace(
            imported, explainer_model="imported:x", train_windows=None, train_quantiles=None, source={"format": "x"}
        ),
    )
    build_report(copy, progress=False)
    html = section((copy / "report" / "latents" / f"{ok.latent}.html").read_text(), "train")
    cache = ActivationCache(copy / "cache")
    decode = token_decoder(AutoTokenizer.from_pretrained(copy / "subject"))
    expected = {"".join(decode(cache.window_tokens(w).tolist())) for w, _ in kept}
    assert {text for text, _ in contexts(html)} == expected
    assert sorted(int(q) for q in re.findall(r'<td class="num" data-v="(\d+)">\d+</td><td>', html)) == sorted(
        q for _, q in kept
    )
    html = section((copy / "report" / "latents" / f"{imported.latent}.html").read_text(), "train")
    assert "explanation was imported" in html and not contexts(html)


def test_skipped_latents_say_why(site, results):
    skipped = results[results["status"] == "skipped"]
    assert sorted(skipped["latent"]) == [2, 16]
    index = section((site / "index.html").read_text(), "latent-table")
    for _, row in skipped.iterrows():
        assert "fewer than min_examples" in row["error"]
        html = (site / "latents" / f"{row['latent']}.html").read_text()
        assert '<span class="status">skipped</span>' in html and row["error"] in unescape(html)
        assert "fires too rarely for a record" in section(html, "train")
        assert "No judgments were recorded" in section(html, "judged")
        assert f'<span class="missing">{row["error"]}</span>' in index


def test_latent_page_shows_every_judgment_right_and_wrong(site, run, results):
    judgments = pd.read_parquet(run / "judgments.parquet")
    assert (judgments["prediction"].isna()).any(), "the fixture judge should leave some answers unreadable"
    assert judgments["control"].any() and not judgments["control"].all()
    for latent, group in judgments.groupby("latent"):
        html = section((site / "latents" / f"{latent}.html").read_text(), "judged")
        for (scorer, control), rows in group.groupby(["scorer", "control"]):
            heading = f"<h3>{scorer} · control</h3>" if control else f"<h3>{scorer}</h3>"
            part = html.split(heading)[1].split("<h3>")[0]
            if control:  # names the latent whose label was used
                donor = int(results.set_index("latent").loc[latent, f"{scorer}_control_latent"])
                assert f'<a href="{donor}.html">latent {donor}</a>' in part
            answered = rows.dropna(subset=["prediction"])
            wrong = int((answered["prediction"].astype(bool) != answered["activating"]).sum())
            right = len(answered) - wrong
            assert part.count('<tr class="wrong">') == wrong
            assert part.count('<tr class="right">') == right
            assert part.count('<tr class="unreadable">') == rows["prediction"].isna().sum()
            assert f"{len(rows)} examples: {right} right, {wrong} wrong" in part
            # every judged excerpt is shaded from the cache; fuzzing's marks are shown as the judge saw them
            assert len(contexts(part)) == len(rows)
            if scorer == "fuzzing":
                assert part.count('class="shown"') == len(rows)


def test_corpus_text_and_labels_cannot_inject_markup(site, run):
    pages = [site / "index.html", *sorted((site / "latents").glob("*.html"))]
    with_payload = [p for p in pages if "pwned" in p.read_text()]
    assert with_payload, "the fixture corpus holds a <script> token; some page should show it"
    for page in pages:
        doc = Elements(page.read_text())
        assert doc.count("script") == 1  # the sorting script, nothing else
        assert doc.count("img") == 0
    doc = Elements(with_payload[0].read_text())
    assert PAYLOAD.strip() in "".join(doc.text)  # shown as text


def test_report_without_the_cache_shows_judged_excerpts_only(run, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("cache", "report"))
    index = build_report(bare, progress=False)
    assert index == bare / "report" / "index.html"
    judgments = pd.read_parquet(bare / "judgments.parquet")
    latent = int(judgments["latent"].iloc[0])
    page = (bare / "report" / "latents" / f"{latent}.html").read_text()
    assert "Per-token activations cannot be shown: no activation cache" in page
    assert 'class="tok on"' not in page
    judged = "".join(Elements(section(page, "judged")).text)
    for text in judgments.loc[judgments["latent"] == latent, "text"]:
        assert text in judged


def test_any_scorer_with_columns_is_reported(run, results, tmp_path):
    """A scorer this version does not know (another helper's, a newer one's) shows up from its columns."""
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("report"))
    table = results.copy()
    rng = np.random.default_rng(0)
    table["simulation_correlation"] = rng.uniform(-0.5, 0.9, len(table))
    table["simulation_n"] = 10
    table["simulation_n_failed"] = 0
    table["simulation_judge_model"] = "sim-judge"
    table.to_parquet(other / "results.parquet")
    config = json.loads((other / "config.json").read_text())
    config["config"]["scorers"] = ["detection", "fuzzing", "simulation"]
    (other / "config.json").write_text(json.dumps(config))

    [sim] = [s for s in find_scorers(table, ["detection", "fuzzing", "simulation"]) if s.name == "simulation"]
    assert sim.metrics == ["correlation"] and sim.headline == "correlation"
    html = build_report(other, progress=False).read_text()
    assert "simulation correlation" in section(html, "distributions")
    assert section(html, "agreement").count("<svg") == 3  # three pairs
    assert "sim-judge" in html
    assert "<small>correlation</small>" in section(html, "latent-table")


def test_scorer_columns_are_found_without_a_config():
    table = pd.DataFrame(
        {
            "latent": [1, 2],
            "detection_balanced_accuracy": [0.5, 0.7],
            "detection_auroc": [None, None],
            "detection_n": [4, 4],
            "detection_n_failed": [0, 1],
            "sim_corr": [0.1, 0.2],
            "sim_n_failed": [0, 0],
            "sim_tokens_corr": [0.3, 0.4],
            "sim_tokens_n_failed": [0, 0],
            "sim_tokens_judge_model": ["j", "j"],
        }
    )
    found = {s.name: s for s in find_scorers(table, [])}
    assert found["detection"].metrics[:2] == ["balanced_accuracy", "auroc"]
    assert found["detection"].shown == ["balanced_accuracy", "auroc"]
    assert found["sim"].metrics == ["corr"]  # not sim_tokens' columns
    assert found["sim_tokens"].metrics == ["corr"]


def test_histogram_counts_and_ticks():
    svg = histogram([0.1, 0.12, 0.9], x_label="x", title="t", bins=10)
    assert re.findall(r"<title>[^<]*: (\d+) latents?</title>", svg) == ["2", "1"]
    assert ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert ticks(-1, 1)[0] == -1 and ticks(-1, 1)[-1] == 1


def test_cli_writes_the_site_and_prints_its_index(run, tmp_path, capsys):
    assert main(["report", str(run), "--site", str(tmp_path / "s"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "s" / "index.html")
    assert len(list((tmp_path / "s" / "latents").glob("*.html"))) == len(pd.read_parquet(run / "results.parquet"))


def test_cli_says_what_is_missing(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no results.parquet" in err and "autointerp run --out" in err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(ReportError):
        build_report(tmp_path)


# ---- in a real browser ----


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("AUTOINTERP_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed (Debian: apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return path


def _browser(url: str, tmp_path: Path, *mode: str) -> subprocess.CompletedProcess:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
        *mode,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_chromium_renders_the_site(site, tmp_path):
    from PIL import Image

    payload_page = next(p for p in sorted((site / "latents").glob("*.html")) if "pwned" in p.read_text())
    for page in (site / "index.html", payload_page):
        png = tmp_path / f"{page.stem}.png"
        proc = _browser(page.as_uri(), tmp_path, f"--screenshot={png}")
        assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert pixels.shape == (900, 1200)
        assert pixels.std() > 10, "the screenshot is blank"

    dom = _browser((site / "index.html").as_uri(), tmp_path, "--dump-dom").stdout
    assert 'id="latents" data-sortable="ready"' in dom  # the sorting script ran
    assert dom.count("<svg") == 7 and dom.count('class="bar"') > 0 and dom.count('class="dot"') > 0
    page = _browser(payload_page.as_uri(), tmp_path, "--dump-dom").stdout
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert "pwned" not in title  # the corpus' <script> did not run...
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in page  # ...it is shown as text
