"""Publishing a run folder as a Hugging Face Hub dataset: the Parquet tables and a generated card.

The folder to upload is staged first, the same way for `--dry-run` (which keeps it and stops) and
for a real upload (which sends exactly that folder), so a dry run shows byte for byte what the Hub
gets. Only the Parquet tables and the card are staged: never the activation cache, the JSONL logs
or config.json itself (a judge URL in it could carry credentials); the card shows a cleaned copy of
the config instead. The card is a pure function of the run folder (no dates, no host names), so
staging twice gives identical bytes.

The token is whatever `huggingface_hub` finds (`HF_TOKEN`, or the file `hf auth login` writes); it
is handed to the client and never printed: every error message that could echo it is scrubbed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import yaml

from autointerp.errors import AutointerpError
from autointerp.llm.accounting import PriceTable, stage_costs
from autointerp.results import JUDGMENTS, RESULTS, find_scorers

RESULTS_PATH = "data/results.parquet"
JUDGMENTS_PATH = "judgments/judgments.parquet"
CARD = "README.md"
LAYOUT = (CARD, RESULTS_PATH, JUDGMENTS_PATH)  # every file a staging folder may hold
TAGS = ["autointerp", "interpretability", "sparse-autoencoder", "explanations"]
# config fields that only describe this machine (or could hold a secret): left out of the card
PRIVATE_FIELDS = ("response_cache_path", "prices", "api_key_env")
LOGIN_HELP = (
    "set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens), "
    "or log in once with `hf auth login` (older huggingface_hub: `huggingface-cli login`)"
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


class PublishError(AutointerpError):
    """Bad input for `autointerp publish`, or a refusal from the Hub, worded for the user."""


@dataclass
class PublishOptions:
    repo_id: str
    private: bool = False
    with_judgments: bool = False
    license: str | None = None
    prices: PriceTable | None = None  # for the card's cost per 1,000 latents (the table is not published)


@dataclass
class RunToPublish:
    """What a run folder says about itself to the card: config.json's three parts (as plain dicts) and the
    results table."""

    folder: Path
    config: dict[str, Any]
    resolved: dict[str, Any]
    environment: dict[str, Any]
    results: pd.DataFrame


def check_repo_id(repo_id: str) -> str:
    if (
        len(repo_id) > 96
        or not _REPO_ID.match(repo_id)
        or ".." in repo_id
        or "--" in repo_id
        or repo_id.endswith((".", "-", ".git"))
    ):
        raise PublishError(
            f"bad --repo {repo_id!r}: expected OWNER/NAME, e.g. alice/smollm2-sae-labels (letters, "
            "digits, '-', '_' and '.'; no '--' or '..'; at most 96 characters)"
        )
    return repo_id


def read_run_to_publish(folder: Path, *, with_judgments: bool = False) -> RunToPublish:
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder} is not a folder: give the run folder that `autointerp run --out` wrote")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PublishError(
            f"{folder} is not an autointerp run folder (no config.json): give the folder that "
            "`autointerp run --out` wrote"
        )
    if not (folder / RESULTS).is_file():
        raise PublishError(
            f"{folder} has no {RESULTS} yet: run `autointerp run --out {folder}` first "
            "(or `autointerp score` on a folder that has explanations)"
        )
    if with_judgments and not (folder / JUDGMENTS).is_file():
        raise PublishError(
            f"{folder} has no {JUDGMENTS}: drop --with-judgments, or run `autointerp score --out {folder}` to write it"
        )
    try:
        data = json.loads(config_path.read_text())
        config = data["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PublishError(f"unreadable run config {config_path}: {e}") from None
    results = pd.read_parquet(folder / RESULTS)
    if not len(results):
        raise PublishError(f"{folder / RESULTS} has no rows: nothing to publish")
    return RunToPublish(folder, config, data.get("resolved") or {}, data.get("environment") or {}, results)


# ----------------------------------------------------------------------------------- the card


def _home_as_tilde(text: str) -> str:
    """The publisher's home folder as ~: a user name in a path is nobody else's business."""
    home = str(Path.home())
    return text.replace(home + os.sep, "~" + os.sep) if len(home) > 1 else text


def _cell(value: Any) -> str:
    """A value as one Markdown table cell: pipes escaped, newlines flattened, home folder as ~."""
    text = _home_as_tilde("" if value is None else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def _named(given: Any, resolved: Any) -> str:
    """`given` as the user wrote it, with what it resolved to when that says more."""
    if resolved in (None, "") or str(resolved) == str(given):
        return f"`{_cell(given)}`"
    return f"`{_cell(given)}` → `{_cell(resolved)}`"


def _redact_url(url: str | None) -> str | None:
    """A judge URL without user:password, query or fragment (where API keys sometimes ride); each of a
    comma-separated list of them."""
    if not url:
        return url
    if "," in url:
        return ",".join(_redact_url(u.strip()) or "" for u in url.split(",") if u.strip())
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k not in PRIVATE_FIELDS}
    if out.get("judge_url"):
        out["judge_url"] = _redact_url(out["judge_url"])
    return out


def _unique(values: Iterable[Any]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v is not None and not (isinstance(v, float) and pd.isna(v)) and str(v) and str(v) not in seen:
            seen.append(str(v))
    return seen


def _column(df: pd.DataFrame, name: str) -> list[str]:
    return _unique(df[name]) if name in df else []


def _finished(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "ok"] if "status" in results else results


def _mean(df: pd.DataFrame, column: str) -> float | None:
    if column not in df:
        return None
    values = pd.to_numeric(df[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def hookpoint_summary(results: pd.DataFrame, scorers: list[str]) -> tuple[list[str], list[list[str]]]:
    """The card's table for a run of several hookpoints: per hookpoint, its latents, those finished, and
    the mean of each scorer's headline metric over them."""
    from autointerp.scorers import scorer_metrics

    if "hookpoint" not in results:
        return [], []
    headlines = [(s, m) for s in scorers for m in scorer_metrics(s)[:1] if f"{s}_{m}" in results]
    header = ["hookpoint", "latents", "finished", *(f"{s} {m}" for s, m in headlines)]
    rows = []
    for hookpoint, group in results.groupby("hookpoint", sort=False):
        ok = _finished(group)
        rows.append(
            [f"`{_cell(hookpoint)}`", f"{len(group):,}", f"{len(ok):,}"]
            + [_fmt(_mean(ok, f"{s}_{m}")) for s, m in headlines]
        )
    return header, rows


def quantile_summary(results: pd.DataFrame, scorers: list[str]) -> tuple[list[str], list[list[str]]]:
    """The card's table of accuracy per activation quantile: a header, and a row per scorer that has
    the metrics (and one for its control), each cell the mean over finished latents."""
    from autointerp.scorers.metrics import NEGATIVE_ACCURACY, metric_quantile, quantile_metric

    ok = _finished(results)
    quantiles = sorted(
        {
            q
            for c in ok.columns
            for s in scorers
            if c.startswith(s + "_") and (q := metric_quantile(c[len(s) + 1 :])) is not None
        }
    )
    if not quantiles:
        return [], []
    rows = []
    for scorer in scorers:
        for name, prefix in ((f"`{scorer}`", f"{scorer}_"), (f"`{scorer}` control", f"{scorer}_control_")):
            metrics = [quantile_metric(q) for q in quantiles] + [NEGATIVE_ACCURACY]
            means = [_mean(ok, prefix + m) for m in metrics]
            if any(m is not None for m in means[:-1]):
                rows.append([name, *(_fmt(m) for m in means)])
    return ["scorer", *(f"q{q}" for q in quantiles), "silent"], rows


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _front_matter(options: PublishOptions, model: str | None) -> str:
    configs: list[dict[str, Any]] = [
        {"config_name": "results", "default": True, "data_files": [{"split": "train", "path": RESULTS_PATH}]}
    ]
    if options.with_judgments:
        configs.append({"config_name": "judgments", "data_files": [{"split": "train", "path": JUDGMENTS_PATH}]})
    front: dict[str, Any] = {}
    if options.license:
        front["license"] = options.license
    front["pretty_name"] = f"autointerp explanations and scores: {model}"
    front["tags"] = TAGS
    front["configs"] = configs
    return yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)


def _columns_section(title: str, path: Path) -> list[str]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    rows = [[f"`{name}`", f"`{schema.field(name).type}`"] for name in schema.names]
    return [f"### {title}", "", *_table(["column", "type"], rows), ""]


def _with_actual(configured: Any, actual: list[str]) -> str:
    """A model as configured (`smollm2`, `openai:gpt-4o-mini`) and as the results name it."""
    text = f"`{_cell(configured)}`"
    return text + " → " + ", ".join(f"`{_cell(a)}`" for a in actual) if actual else text


def _provenance(run: RunToPublish, scorers: list[str], model: str | None, hookpoints: list[str]) -> list[list[str]]:
    cfg, res, env, df = run.config, run.resolved, run.environment, run.results
    dictionary = _named(cfg.get("dictionary"), res.get("dictionary"))
    extra = [
        f"{label}{res[k]}{unit}"
        for k, label, unit in (("dictionary_format", "", ""), ("d_in", "d_in ", ""), ("num_latents", "", " latents"))
        if k in res
    ]
    if extra:
        dictionary += " (" + ", ".join(_cell(e) for e in extra) + ")"
    judge = _with_actual(cfg.get("judge"), _unique(m for s in scorers for m in _column(df, f"{s}_judge_model")))
    if cfg.get("judge_url"):
        judge += f" at `{_cell(_redact_url(cfg['judge_url']))}`"
    corpus = _named(cfg.get("corpus"), res.get("corpus"))
    if res.get("n_tokens"):
        corpus += f", {int(res['n_tokens']):,} tokens cached"
    return [
        ["subject model", _named(cfg.get("model"), model)],
        ["dictionary", dictionary],
        ["hookpoints", ", ".join(f"`{_cell(h)}`" for h in hookpoints)],
        ["corpus", corpus],
        ["explainer", _with_actual(cfg.get("explainer") or cfg.get("judge"), _column(df, "explainer_model"))],
        ["judge", judge],
        ["scorers", ", ".join(f"`{s}`" for s in scorers)],
        ["prompts sha256", f"`{_cell(env.get('prompts_sha256'))}`"],
        ["seed", f"`{_cell((cfg.get('cache') or {}).get('seed'))}`"],
        ["software", ", ".join(f"{_cell(k)} {_cell(v)}" for k, v in env.items() if k != "prompts_sha256")],
    ]


def _scorer_settings(cfg: dict[str, Any], scorers: list[str]) -> list[list[str]]:
    """What decides how a label is scored: the held-out examples, and the settings of the run's scorers
    (the sections they own, as config.json has them; an older version's keys read as the same)."""
    from autointerp.config import upgrade
    from autointerp.scorers.registry import find_scorer

    scoring = upgrade(cfg).get("scoring") or {}
    sections = [c.section for s in scorers if (found := find_scorer(s)) is not None for c in found.settings_classes]
    rows = [[f"`sampling.{k}`", f"`{_cell(v)}`"] for k, v in (cfg.get("sampling") or {}).items()]
    rows += [
        [f"`scoring.{section}.{k}`", f"`{_cell(v)}`"]
        for section in dict.fromkeys(sections)
        for k, v in (scoring.get(section) or {}).items()
    ]
    return rows + [[f"`{k}`", f"`{_cell(cfg[k])}`"] for k in ("no_logprobs",) if k in cfg]


def _unusable(df: pd.DataFrame, scorers: list[str]) -> list[str]:
    out = []
    for s in scorers:
        if f"{s}_n" in df and f"{s}_n_failed" in df:
            total = int(pd.to_numeric(df[f"{s}_n"], errors="coerce").fillna(0).sum())
            failed = int(pd.to_numeric(df[f"{s}_n_failed"], errors="coerce").fillna(0).sum())
            out.append(f"{s} {failed}/{total}")
    return out


def _cost_section(df: pd.DataFrame, prices: PriceTable | None) -> list[str]:
    """Judge tokens (and, with prices, USD) per 1,000 latents for each stage; uncached and cached apart,
    since providers bill tokens their prefix cache served at a lower price."""
    costs = stage_costs(df, prices)
    if not costs:
        return []
    header = ["stage", "model", "latents", "uncached prompt tokens", "cached prompt tokens", "completion tokens"]
    if prices is not None:
        header += ["USD uncached prompt", "USD cached prompt", "USD completion", "USD"]
    rows = []
    for c in costs:
        u = c.usage
        row: list[Any] = [
            f"`{c.stage}`",
            _cell(c.model),
            c.latents,
            f"{c.per_1000(u.computed_prompt_tokens):,.0f}",
            f"{c.per_1000(u.cached_prompt_tokens):,.0f}",
            f"{c.per_1000(u.completion_tokens):,.0f}",
        ]
        if prices is not None:
            usd = c.usd_per_1000
            row += [f"{v:.4f}" for v in usd] + [f"{sum(usd):.4f}"] if usd is not None else ["", "", "", "no price"]
        rows.append(row)
    lines = [
        "## Judge cost",
        "",
        "Judge tokens per 1,000 latents, by stage (the columns `<stage>_prompt_tokens`, "
        "`<stage>_cached_prompt_tokens` and `<stage>_completion_tokens` per latent); cached prompt tokens are "
        "those the backend reported its prefix cache held"
        + (", priced with the run's price table (USD per 1,000 latents)" if prices is not None else "")
        + ":",
        "",
        *_table(header, rows),
        "",
    ]
    return lines


def dataset_card(run: RunToPublish, options: PublishOptions) -> str:
    """The README.md of the dataset repo: `configs:` front matter for `load_dataset`, then provenance."""
    cfg, df, repo = run.config, run.results, options.repo_id
    scorers = [s for s in cfg.get("scorers") or [] if isinstance(s, str)]
    models = _column(df, "model")
    model = models[0] if models else run.resolved.get("model") or cfg.get("model")
    hookpoints = _column(df, "hookpoint") or _unique([run.resolved.get("hookpoint") or cfg.get("hookpoint")])
    several = len(hookpoints) > 1
    ok = int((df["status"] == "ok").sum()) if "status" in df else len(df)
    found = {s.name: s for s in find_scorers(df, scorers)}
    scores = [(s, h) for s in scorers if s in found for h in found[s].headlines]
    controlled = any(h.control is not None for _, h in scores)
    summary = [
        [f"`{s}`", h.metric, _fmt(h.mean), _fmt(h.median)] + ([_fmt(h.control)] if controlled else []) + [h.latents]
        for s, h in scores
    ]
    quantile_header, quantile_rows = quantile_summary(df, scorers)
    stored = {"config": public_config(cfg), "resolved": run.resolved, "environment": run.environment}

    lines = [
        "---",
        _front_matter(options, model).rstrip("\n"),
        "---",
        "",
        f"# autointerp explanations and scores: {_cell(model)}",
        "",
        f"Natural-language explanations of {len(df):,} dictionary latents of `{_cell(model)}` at "
        f"{', '.join(f'`{_cell(h)}`' for h in hookpoints)}, each scored by LLM judges on held-out "
        f"examples; written by `autointerp publish`. One row per "
        + ("(hookpoint, latent)" if several else "latent")
        + f": {ok:,} finished "
        '(`status == "ok"`), the others say why in `status` and `error`.',
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'results = load_dataset("{repo}", split="train")  # one row per latent',
    ]
    if options.with_judgments:
        lines.append(f'judgments = load_dataset("{repo}", "judgments", split="train")  # one row per judged example')
    lines += [
        "```",
        "",
        "## Scores",
        "",
        f"Over the {ok:,} finished latents (a metric that is undefined for a latent, such as AUROC with one "
        "class, is null and left out):",
        "",
        *_table(["scorer", "metric", "mean", "median", *(["control mean"] if controlled else []), "latents"], summary),
        "",
    ]
    if controlled:
        lines += [
            "The control is the same metric with each latent's held-out examples scored with another latent's "
            "label (a seeded derangement; columns `<scorer>_control_<metric>`, the donor in "
            "`<scorer>_control_latent`"
            + (" at `<scorer>_control_hookpoint`" if several else "")
            + "): the level a wrong label reaches with this judge on these examples.",
            "",
        ]
    if several:
        header, rows = hookpoint_summary(df, scorers)
        lines += [f"Per hookpoint ({len(hookpoints)} in this run):", "", *_table(header, rows), ""]
    if quantile_rows:
        lines += [
            "Accuracy per activation quantile (q0 = weakest): the share of the held-out activating examples of "
            "each quantile judged activating, and on silent examples the share judged silent; means over the "
            "finished latents (columns `<scorer>_quantile_accuracy_<q>` and `<scorer>_negative_accuracy`):",
            "",
            *_table(quantile_header, quantile_rows),
            "",
        ]
    if unusable := _unusable(df, scorers):
        lines += [
            "Judge answers that could not be read (counted, excluded from the metrics): " + ", ".join(unusable) + ".",
            "",
        ]
    lines += _cost_section(df, options.prices)
    lines += [
        "## Provenance",
        "",
        *_table(["", ""], _provenance(run, scorers, model, hookpoints)),
        "",
        "## Scorer settings",
        "",
        *_table(["setting", "value"], _scorer_settings(cfg, scorers)),
        "",
        "<details><summary>Run configuration (config.json, machine-local fields removed)</summary>",
        "",
        "```json",
        _home_as_tilde(json.dumps(stored, indent=2, default=str)),
        "```",
        "",
        "</details>",
        "",
        "## Columns",
        "",
        *_columns_section(f"`results` ({RESULTS_PATH})", run.folder / RESULTS),
    ]
    if options.with_judgments:
        lines += _columns_section(f"`judgments` ({JUDGMENTS_PATH})", run.folder / JUDGMENTS)
    return "\n".join(lines).rstrip("\n") + "\n"


# -------------------------------------------------------------------------------- staging


def _clear_staging(dest: Path) -> None:
    """Empty a folder an earlier `publish` staged; refuse anything else (it is not ours to delete)."""
    if dest.exists() and not dest.is_dir():
        raise PublishError(f"staging folder {dest} is a file: pick another --staging-dir")
    if not dest.exists():
        return
    found = [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()]
    strangers = [p for p in found if p not in LAYOUT]
    if strangers:
        raise PublishError(
            f"staging folder {dest} holds files `autointerp publish` did not write "
            f"({', '.join(sorted(strangers)[:5])}): pick an empty or new --staging-dir"
        )
    shutil.rmtree(dest)


def stage(run: RunToPublish, options: PublishOptions, dest: Path) -> list[str]:
    """Write the exact folder to upload into `dest`; returns its files, relative, sorted."""
    dest = Path(dest)
    _clear_staging(dest)
    (dest / "data").mkdir(parents=True)
    shutil.copyfile(run.folder / RESULTS, dest / RESULTS_PATH)
    if options.with_judgments:
        (dest / "judgments").mkdir()
        shutil.copyfile(run.folder / JUDGMENTS, dest / JUDGMENTS_PATH)
    (dest / CARD).write_text(dataset_card(run, options), encoding="utf-8")
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------- upload


def _redactor(token: str | None) -> Callable[[str], str]:
    return lambda text: text.replace(token, "***") if token else text


def find_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError(f"no Hugging Face token found: {LOGIN_HELP}")
    return token


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection/timeout errors (httpx2 in huggingface_hub 2.x, httpx in 1.x)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


@dataclass
class Published:
    url: str
    files: list[str]
    created: bool  # False: the repo existed and got a new commit


def upload(
    staging: Path,
    options: PublishOptions,
    *,
    token: str,
    endpoint: str | None = None,
    commit_message: str = "Upload autointerp results",
) -> Published:
    """Create the dataset repo if needed (private with --private) and commit the staging folder to it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    redact = _redactor(token)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    api = HfApi(endpoint=endpoint, token=token)
    repo = options.repo_id
    try:
        created = True
        try:
            api.create_repo(repo, repo_type="dataset", private=True if options.private else None)
        except HfHubHTTPError as e:
            if e.response is None or e.response.status_code != 409:
                raise
            created = False  # it exists: make sure --private is not silently ignored
            info = api.repo_info(repo, repo_type="dataset")
            if options.private and not info.private:
                raise PublishError(
                    f"{repo} already exists and is public: --private cannot make it private. "
                    "Change its visibility in its settings on the Hub, or publish to a new "
                    "--repo"
                ) from None
        api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(staging), commit_message=commit_message)
    except PublishError:
        raise
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise PublishError(
                f"the Hub at {endpoint} refused the token for {repo} (HTTP {status}): it needs "
                f"write access to that namespace; {LOGIN_HELP}"
            ) from None
        first = redact(str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PublishError(f"the Hub at {endpoint} refused the upload to {repo} (HTTP {status}): {first}") from None
    except _transport_errors() as e:
        raise PublishError(f"could not reach the Hub at {endpoint}: {type(e).__name__}: {redact(str(e))}") from None
    except ValueError as e:  # e.g. the Hub's YAML check rejected the card
        raise PublishError(f"the Hub at {endpoint} rejected the upload to {repo}: {redact(str(e))}") from None
    files = sorted(p.relative_to(staging).as_posix() for p in Path(staging).rglob("*") if p.is_file())
    return Published(url=f"{endpoint}/datasets/{repo}", files=files, created=created)


def publish(
    folder: Path, options: PublishOptions, *, dry_run: bool = False, staging: Path | None = None, progress: bool = True
) -> tuple[Path | None, Published | None]:
    """Stage the run folder; unless `dry_run`, upload it. Returns (kept staging folder, upload result)."""
    check_repo_id(options.repo_id)
    if options.license is not None and not _LICENSE.match(options.license):
        raise PublishError(
            f"bad --license {options.license!r}: a Hub license id such as mit, apache-2.0, cc-by-4.0 or other"
        )
    run = read_run_to_publish(folder, with_judgments=options.with_judgments)
    if dry_run:
        dest = Path(staging) if staging is not None else Path(folder) / "hub"
        stage(run, options, dest)
        return dest, None
    token = find_token()  # before any work: a missing login should not cost a staging pass
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    message = f"autointerp publish: {len(run.results)} latents"
    if staging is not None:
        stage(run, options, Path(staging))
        return Path(staging), upload(Path(staging), options, token=token, commit_message=message)
    with tempfile.TemporaryDirectory(prefix="autointerp-publish-") as tmp:
        dest = Path(tmp) / "dataset"
        stage(run, options, dest)
        return None, upload(dest, options, token=token, commit_message=message)
