"""The Python API: a run folder as an object, for notebooks and scripts.

    import autointerp

    run = autointerp.Run("runs/demo", judge="smollm2", max_latents=3, n_tokens=20_000)
    run.cache()             # the activation cache (resumes a half-built one)
    run.explain()           # a label per latent
    run.score()             # detection and fuzzing scores of those labels
    run.results()           # results.parquet as a pandas DataFrame, one row per latent
    run.judgments()         # judgments.parquet, one row per judge answer

`Run` is what the command line runs: `autointerp run --out DIR --n-test 5` is
`Run(DIR, n_test=5).run()`, with the same options (a flag's name as a keyword), the same checks, the
same files and the same resume. The CLI only parses arguments and prints; everything it does is a
method here, so a notebook can do anything the command line can.

Keyword options name the command line's flags (`--judge-mode json` is `judge_mode="json"`,
`--no-cache` is `no_cache=True`), whole fields of `RunConfig` (`sampling=SamplingSettings(...)`), or a
scorer's settings section by its name (`classifier=ClassifierSettings(mode="json")`).
As on the command line, the options that define the run folder (model, dictionary, corpus, sizes,
the example split) are remembered by the folder: a later `Run` on it may leave them out, and one that
gives another value is refused. Every other option is the call's own, and takes its default when left
out.

Each stage runs its own event loop; inside a running one (a Jupyter cell) it runs in a worker
thread, so `run.score()` works the same in a notebook and a script. Nothing heavy (torch, the models)
is imported before a stage needs it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from autointerp.config import RunConfig, load_config, merge, save_config, with_folder
from autointerp.errors import ConfigError
from autointerp.option_table import config_from_options
from autointerp.scorers.registry import check_config

if TYPE_CHECKING:
    import pandas as pd

    from autointerp.distributed.latents import RayOptions
    from autointerp.folder_lock import Holder
    from autointerp.hub import Published
    from autointerp.llm.accounting import PriceTable
    from autointerp.llm.base import Judge
    from autointerp.pipeline import RunSummary
    from autointerp.records import LatentId
    from autointerp.results import RunFiles

T = TypeVar("T")
Echo = Callable[[str], None]


def _echo_stdout(text: str) -> None:
    print(text)
    sys.stdout.flush()


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end, from plain code or from inside a running event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


TABLE_MAX_LATENTS = 20  # a summary lists each latent up to this many; a bigger run points at results.parquet
LABEL_WIDTH = 60


def latent_table(table: pd.DataFrame, scorers: list[str]) -> list[str]:
    """One line per latent: each scorer's AUROC (or its headline metric) with its shuffled-label control beside it
    (where the run has controls), then the label, or the reason the latent has none."""
    from autointerp.scorers.registry import scorer_metrics

    columns: list[tuple[str, str, str | None]] = []  # (header, column, control column where the run has one)
    for scorer in scorers:
        metrics = scorer_metrics(scorer)
        m = "auroc" if "auroc" in metrics else metrics[0] if metrics else None  # AUROC needs no threshold
        if m is not None and f"{scorer}_{m}" in table:
            wanted = f"{scorer}_control_{m}"
            columns.append((f"{scorer} {m}", f"{scorer}_{m}", wanted if wanted in table else None))
    header = f"  {'latent':>8}"
    for name, _, control in columns:
        header += f"  {name:>{max(len(name), 5)}}" + ("  control" if control else "")
    lines = [header + "  label"]

    def number(value: object, width: int) -> str:
        return f"{value:>{width}.2f}" if isinstance(value, float) and value == value else f"{'-':>{width}}"

    several = "hookpoint" in table and table["hookpoint"].nunique() > 1  # then a latent is named with its hookpoint
    for _, row in table.iterrows():
        line = f"  {row['latent']:>8}" if not several else f"  {row['hookpoint']}:{row['latent']}"
        for name, column, control in columns:
            line += "  " + number(row[column], max(len(name), 5))
            if control:
                line += "  " + number(row[control], 7)
        label = row["explanation"] if row["status"] == "ok" else f"({row['status']}: {row.get('error') or ''})"
        label = " ".join(str(label).split())
        lines.append(line + "  " + (label if len(label) <= LABEL_WIDTH else label[: LABEL_WIDTH - 1] + "…"))
    return lines


@dataclass
class Outcome:
    """What an explain or score stage did: the counts, and the results table it left in the folder."""

    summary: RunSummary
    results: pd.DataFrame  # results.parquet as written at the end of the stage
    config: RunConfig  # the config the stage ran with
    files: RunFiles
    prices: PriceTable | None = None

    @property
    def failed(self) -> int:
        """Latents with no usable label, or a scorer that ended without a score."""
        return self.summary.failed

    def describe(self) -> str:
        """The summary the command line prints: counts, mean headline metrics per scorer, token use."""
        from autointerp.llm.accounting import describe, describe_costs, stage_costs
        from autointerp.results import find_scorers, usage_by_model
        from autointerp.scorers.registry import find_scorer

        summary, table = self.summary, self.results
        controlled = f"{summary.controlled} controlled, " if summary.controlled else ""
        lines = [
            f"{summary.latents} latents in {summary.seconds:.0f}s: {summary.explained} explained, "
            f"{summary.scored} scored, {controlled}{summary.skipped} skipped, {summary.failed} failed"
        ]
        found = {s.name: s for s in find_scorers(table, self.config.scorers)} if len(table) else {}
        for scorer in self.config.scorers:
            columns = found.get(scorer)
            parts = [
                f"{h.metric} {h.mean:.3f}" + (f" (control {h.control:.3f})" if h.control is not None else "")
                for h in (columns.headlines if columns else [])
                if h.mean is not None
            ]
            if columns and parts:  # an explain-only folder has the columns, but no score yet
                cls = find_scorer(scorer)
                asks = cls is None or cls.needs_judge  # embedding asks no judge
                note = (
                    f"{columns.n_failed}/{columns.n} judge answers unusable"
                    if asks
                    else f"{columns.n} examples, no judge"
                )
                lines.append(f"  {scorer}: mean " + ", ".join(parts) + f" ({note})")
        for msg in summary.messages:
            lines.append("  " + msg)
        if 0 < len(table) <= TABLE_MAX_LATENTS:
            lines += latent_table(table, self.config.scorers)
        lines.append(f"results: {self.files.results}")
        for model, usage in usage_by_model(self.files).items():
            lines.append(f"  tokens in this folder, {describe(usage, model, self.prices)}")
        if self.prices is not None:
            lines += ["  " + line for line in describe_costs(stage_costs(table, self.prices), self.prices)]
        return "\n".join(lines)

    def failure_note(self) -> str | None:
        """Where the reasons are, when some latents failed (None when none did)."""
        if not self.failed:
            return None
        files = self.files
        return (
            f"{self.failed} of {self.summary.latents} latents failed; the reasons are in the status and error "
            f"columns of {files.results} (in full in {files.explanations.name} and {files.scores.name}); running "
            "the command again retries those that ended in an error"
        )


def _progress_bars(progress: bool | None, quiet: bool | None) -> bool:
    """Whether to show progress bars: `progress`, or `quiet` said the other way round (on by default).
    Both are accepted because the command line says `--quiet` and a notebook says `progress=False`."""
    if progress is not None and quiet is not None and progress == quiet:
        raise ConfigError(f"progress={progress} and quiet={quiet} contradict each other: give one of them")
    if progress is not None:
        return progress
    return not quiet


class Run:
    """A run folder and the options of the stages to run on it (see the module docstring).

    `model` and `dictionary` may also be objects, as delphi and SAEBench users hold them: a transformers
    causal LM with `tokenizer=...` (or the pair `(model, tokenizer)`), and a sae_lens SAE, a sparsify
    SparseCoder or any torch module with `encode()` (with `hookpoint=...` where the object does not name
    it). config.json records their class (and the dictionary's cfg); a folder cached from objects is
    resumed by handing the same objects again.

    `judges` maps judge names to ready `Judge` objects used instead of loading those names (a
    scripted judge in a test, a judge a notebook built itself); `echo` receives the progress lines
    the command line prints (None: silent); `progress` shows progress bars, and `quiet=True` (the
    command line's `--quiet`) is another way to say `progress=False`. `ray` caches (shards of the
    corpus rows), explains and scores (shards of latents) on a Ray cluster (`--ray`): "local" (a Ray
    instance started for the run), "auto" (the cluster this machine belongs to) or its address; None
    runs in this process. `ray_storage`, an fsspec URL (`s3://BUCKET/PREFIX`), is where the driver and the
    workers exchange the run when the machines share no folder (`--ray-storage`).

    A stage takes the folder's lock (folder_lock.py) for as long as it writes: when another command (or
    the HTTP service) is writing the folder, it raises `FolderBusy` naming the holder, or with `wait`
    (`--wait`) waits for the holder to end first.
    """

    def __init__(
        self,
        out: str | Path,
        config: RunConfig | None = None,
        *,
        progress: bool | None = None,
        quiet: bool | None = None,
        echo: Echo | None = _echo_stdout,
        judges: dict[str, Judge] | None = None,
        ray: str | None = None,
        ray_storage: str | None = None,
        wait: bool = False,
        **options: Any,
    ):
        from autointerp.folder_lock import FolderLock
        from autointerp.results import RunFiles

        if ray is not None and judges is not None:
            raise ConfigError("a Ray run makes its judges in each worker, by name: give no judges objects with ray")
        self.files = RunFiles(Path(out))
        self.progress = _progress_bars(progress, quiet)
        self.echo = echo or (lambda text: None)
        self.judges = judges
        self.wait = wait
        self.lock = FolderLock(self.files.folder)
        if ray_storage is not None and ray is None:
            raise ConfigError("--ray-storage URL is where the machines of a Ray run exchange it: give it with --ray")
        self.ray = ray
        self.ray_storage = ray_storage
        if config is not None:
            defaults = RunConfig()
            given = {f.name: getattr(config, f.name) for f in fields(RunConfig)}
            # a field left at its default counts as not given, as an option left off the command line does
            explicit = {name for name, value in given.items() if value != getattr(defaults, name)}
            options = {**{name: given[name] for name in explicit}, **options}
        options = _objects_by_name(options, ray)
        self.requested, self.explicit = config_from_options(options)
        if {"sample_latents", "max_latents"} <= self.explicit:
            raise ConfigError("--sample-latents N draws N latents per hookpoint: give it or --max-latents, not both")

    @property
    def folder(self) -> Path:
        return self.files.folder

    @property
    def config(self) -> RunConfig:
        """The config the next stage runs with: the options given, on the folder's stored settings."""
        return self._resolve()[0]

    def _resolve(self) -> tuple[RunConfig, dict[str, Any], RunConfig | None]:
        """The config (the options on the folder's cache and split settings), what the folder resolved
        (names, sizes), and the config stored in the folder (None for a new one)."""
        if self.files.config.exists():
            stored, resolved = load_config(self.files.config)
            return merge(stored, self.requested, self.explicit), resolved, stored
        return RunConfig.from_dict(self.requested.to_dict()), {}, None

    # ------------------------------------------------------------ stages

    def cache(self) -> dict[str, Any]:
        """Build (or finish) the activation cache; returns what the folder resolved: the model, dictionary
        and hookpoint as recorded, the corpus, the number of latents and of tokens cached."""
        with self._writing():
            return self._cache()

    def _cache(self) -> dict[str, Any]:
        self.files.prepare()
        config, resolved, stored = self._resolve()
        check_config(config)
        self._connect()  # Ray missing or out of reach fails before minutes of caching
        if self.ray is not None:
            from autointerp.distributed.caching import cache_on_ray

            resolved = cache_on_ray(
                self.files, config, self._ray_options(), progress=self.progress, resolved=resolved, echo=self.echo
            )
        else:
            from autointerp.stages.cache_stage import cache_stage

            resolved = cache_stage(self.files, config, progress=self.progress, resolved=resolved, echo=self.echo)
        ctx_len = (resolved.get("contexts") or {}).get("ctx_len") or config.cache.ctx_len or 0
        # the folder remembers the length its contexts have, so a later --ctx-len is compared with it
        config = replace(config, cache=replace(config.cache, ctx_len=ctx_len or config.cache.ctx_len))
        note = " (the corpus ended first)" if resolved["n_tokens"] + ctx_len <= config.n_tokens else ""
        self.echo(f"cache: {resolved['n_tokens']:,} tokens{note}, {cached_latents(resolved)} in {self.files.cache}")
        # the cache settles what defines the folder; the stage's other options are recorded once they
        # too have been checked (judges reached, explanations read), by the stage that uses them
        save_config(self.files.config, with_folder(stored or RunConfig(), config), resolved)
        return resolved

    def explain(self) -> Outcome:
        """Label the selected latents (resumes: latents already labelled are kept)."""
        return self._latent_stages({"explain"})

    def score(
        self,
        explanations: str | Path | None = None,
        *,
        explanations_format: str | None = None,
        explanations_layer: str | None = None,
    ) -> Outcome:
        """Score the selected latents' labels; or, given `explanations` (a file or folder of labels made
        elsewhere, see the README), import them and score only their latents. `explanations_format`
        forces the file's format (default: detected); `explanations_layer` takes the file's entries of
        that layer, named as the file names it."""
        return self._latent_stages(
            {"score"}, explanations=explanations, fmt=explanations_format, layer=explanations_layer
        )

    def run(self) -> Outcome:
        """Cache, then explain and score each latent: `autointerp run`."""
        with self._writing():  # one hold for both: no other command gets in between
            self.cache()
            return self._latent_stages({"explain", "score"})

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        """The folder's lock, held while a stage writes (see the class docstring)."""

        def waiting(holder: Holder | None) -> None:
            who = holder.describe() if holder is not None else "another process"
            self.echo(f"waiting for {who} to finish writing {self.folder}")

        return self.lock.hold(wait=self.wait, waiting=waiting)

    def _latent_stages(
        self,
        stages: set[str],
        *,
        explanations: str | Path | None = None,
        fmt: str | None = None,
        layer: str | None = None,
    ) -> Outcome:
        with self._writing():
            return self._stages(stages, explanations=explanations, fmt=fmt, layer=layer)

    def _stages(
        self,
        stages: set[str],
        *,
        explanations: str | Path | None = None,
        fmt: str | None = None,
        layer: str | None = None,
    ) -> Outcome:
        from autointerp.llm.accounting import PriceTable
        from autointerp.stages.latent_stages import write_results

        files = self.files
        files.prepare()
        config, resolved, stored = self._resolve()
        if "explain" in stages:
            config = self._explainer_style(config, stored)
        check_config(config)
        if (fmt is not None or layer is not None) and explanations is None:
            raise ConfigError("--explanations-format and --explanations-layer go with --explanations FILE")
        if not files.config.exists():
            raise ConfigError(
                f"{files.folder} has no run yet: start with `autointerp cache --out {files.folder}` or `autointerp run`"
            )
        prices = PriceTable.load(config.prices) if config.prices else None

        def ready() -> RunConfig | tuple[RunConfig, list[LatentId]]:
            """Judges are reached: read the explanations to import, then record the stage's options."""
            selected: RunConfig | tuple[RunConfig, list[LatentId]] = config
            if explanations is not None:
                selected = self._import(config, Path(explanations), fmt or "auto", layer)
            save_config(files.config, config, resolved)
            return selected

        if self.ray is not None:
            from autointerp.distributed.latents import run_latent_stages

            summary = run_latent_stages(files, config, stages, self._ray_options(), progress=self.progress, ready=ready)
        else:
            from autointerp.stages.latent_stages import latent_stages

            summary = _run_sync(
                latent_stages(files, config, stages, progress=self.progress, judges=self.judges, ready=ready)
            )
        table = write_results(files, config, resolved)
        return Outcome(summary, table, config, files, prices)

    def _explainer_style(self, config: RunConfig, stored: RunConfig | None) -> RunConfig:
        """The config with its explainer style settled, said through `echo`: --explainer-style when given;
        else, in a folder that already holds explanations, the style they were written in (labels of one
        run are not silently of two kinds); else the default of the explainer's backend. The stage
        records it in config.json with its other options."""
        from autointerp.stages.latent_stages import explainer_style

        style, why = explainer_style(config)
        kept = stored.explain.style if stored is not None else None
        if config.explain.style is None and kept is not None and self.files.explanations.exists():
            if self.files.explanations.stat().st_size:
                style, why = kept, "the style this folder's explanations were written in"
        self.echo(f"explainer style: {style} ({why})")
        return replace(config, explain=replace(config.explain, style=style))

    def _ray_options(self) -> RayOptions:
        from autointerp.distributed.latents import RayOptions

        return RayOptions(self.ray, storage=self.ray_storage)

    def _connect(self) -> None:
        """Storage and cluster reached (storage first: it answers in moments, a local Ray takes seconds)."""
        if self.ray_storage is not None:
            from autointerp.distributed.storage import Storage

            Storage(self.ray_storage).check()
        if self.ray is not None:
            from autointerp.distributed.cluster import connect

            connect(self.ray)

    def _import(self, config: RunConfig, path: Path, fmt: str, layer: str | None) -> tuple[RunConfig, list[LatentId]]:
        """Write the file's explanations into the run; the config to score with, and just their (hookpoint,
        latent) pairs (the `latents` option, when given, restricts the import; the run's stored config is
        not changed)."""
        from dataclasses import replace

        from autointerp.explanation_hub import explanations_at
        from autointerp.importing import import_explanations

        with explanations_at(str(path), self.files.hookpoints()) as found:  # a Hub id: the run's files, pinned
            outcome = import_explanations(
                self.files,
                config,
                found.path,
                fmt=fmt,
                layer=layer,
                latents=config.latents,
                progress=self.progress,
                source=found.source,
            )
        self.echo(outcome.summary())
        latents: list[int | str] = list(outcome.latents)
        return replace(config, latents=latents, max_latents=None, sample_latents=None), outcome.units

    # ------------------------------------------------------------ reading and sharing what a run wrote

    def results(self) -> pd.DataFrame:
        """results.parquet: one row per latent (its label, status and every scorer's metrics)."""
        return self._table(self.files.results)

    def judgments(self) -> pd.DataFrame:
        """judgments.parquet: one row per judged example (what the judge read, answered and got right)."""
        return self._table(self.files.judgments)

    def _table(self, path: Path) -> pd.DataFrame:
        import pandas as pd

        if not path.exists():
            raise ConfigError(f"{self.folder} has no {path.name} yet: explain or score first")
        return pd.read_parquet(path)

    def report(self, site: str | Path | None = None) -> Path:
        """Write the static HTML report (default: into FOLDER/report); returns its index.html."""
        from autointerp.report import build_report

        return build_report(self.folder, Path(site) if site is not None else None, progress=self.progress)

    def publish(
        self,
        repo: str,
        *,
        private: bool = False,
        with_judgments: bool = False,
        license: str | None = None,
        dry_run: bool = False,
        staging: str | Path | None = None,
        prices: str | Path | None = None,
    ) -> tuple[Path | None, Published | None]:
        """Upload the results to the Hugging Face Hub as a dataset repo `repo` with a generated card (see
        the README); with `dry_run`, only write the folder that would be uploaded. Returns (the staging
        folder, when kept; the upload, unless a dry run)."""
        from autointerp.hub import PublishOptions, publish
        from autointerp.llm.accounting import PriceTable

        table = PriceTable.load(prices) if prices is not None else None
        options = PublishOptions(
            repo_id=repo, private=private, with_judgments=with_judgments, license=license, prices=table
        )
        return publish(
            self.folder,
            options,
            dry_run=dry_run,
            staging=Path(staging) if staging is not None else None,
            progress=self.progress,
        )


def _is_name(value: Any) -> bool:
    return value is None or isinstance(value, (str, Path))


def _objects_by_name(options: dict[str, Any], ray: str | None) -> dict[str, Any]:
    """The options with a model or dictionary object (a transformers model and its tokenizer; a sae_lens SAE, a
    sparsify SparseCoder or a module with encode()) replaced by the name it is registered under for this
    process (`subjects/in_memory.py`). The model's device and dtype are the run's unless the options say."""
    options = dict(options)
    tokenizer = options.pop("tokenizer", None)
    model, dictionary = options.get("model"), options.get("dictionary")
    if _is_name(model) and _is_name(dictionary):
        if tokenizer is not None:
            raise ConfigError("tokenizer= goes with a model object: model=<a transformers model>, tokenizer=...")
        return options
    if ray is not None:
        raise ConfigError("a Ray run loads its model and dictionary in each worker, by name: give paths or Hub ids")
    from autointerp.subjects import in_memory

    if not _is_name(model):
        if isinstance(model, tuple):
            if len(model) != 2 or tokenizer is not None:
                raise ConfigError("model=(model, tokenizer): a pair, and then no tokenizer= beside it")
            model, tokenizer = model
        options["model"] = in_memory.register_model(model, tokenizer)
        options.setdefault("device", in_memory.model_device(model))
        dtype = in_memory.model_dtype(model)
        if dtype is not None:
            options.setdefault("dtype", dtype)
    elif tokenizer is not None:
        raise ConfigError("tokenizer= goes with a model object: model=<a transformers model>, tokenizer=...")
    if not _is_name(dictionary):
        options["dictionary"] = in_memory.register_dictionary(dictionary, options.get("hookpoint"))
    return options


def cached_latents(resolved: dict[str, Any]) -> str:
    """`4,608 latents at layers.3`, or for several hookpoints `3 hookpoints: layers.0 (24 latents), ...`."""
    from autointerp.stages.cache_stage import run_hookpoints

    hookpoints = run_hookpoints(resolved)
    by = resolved.get("by_hookpoint") or {}
    if len(hookpoints) <= 1:
        return f"{resolved['num_latents']:,} latents at {resolved.get('hookpoint')}"
    each = ", ".join(f"{hp} ({by.get(hp, {}).get('num_latents', 0):,} latents)" for hp in hookpoints)
    return f"{len(hookpoints)} hookpoints: {each}"


def provenance(resolved: dict[str, Any]) -> dict[str, Any]:
    return {k: resolved.get(k) for k in ("model", "dictionary", "hookpoint")}
