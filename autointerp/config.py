"""One object describes a run; it is written next to the outputs as config.json.

`RunConfig` nests the settings of each stage (settings.py) and adds what names the run's inputs and
judges. Every field is declared with `setting()`, so its default, its checks and its command-line
option (flag, help, group, commands) live in one place; option_table.py turns these fields, and
those of each scorer's own settings, into the table the CLI and the Python API both read: the
CLI's `--n-test 5` and the API's `Run(..., n_test=5)` set the same field through the same code, and
get the same checks.

Each scorer owns its settings (scorers/<name>.py declares them): the config holds them as plain
values under `scoring`, by section (`scoring["classifier"]["mode"]`), and imports no scorer; the
scorer registry checks them (`scorers.registry.check_config`). Config files written before scorers
owned their settings (`classifier`, `intervention`, `fuzz_negatives`, `embedding_model` at the top)
load into the same sections.

Fields marked `frozen` define the activation cache and the train/test split. Once a run folder has
them, later stages (`explain`, `score`, a resumed `run`) must agree, because scoring with a
different split than the explainer saw would silently leak or mix examples. They are the only
fields a folder remembers for the next command: every other option (judge, latents, scorers...)
belongs to the command that gives it, so a command that failed cannot leave its choices behind
for the next one, and a command does what its own line says.

Importing this module is cheap (no torch, numpy or pandas): see settings.py.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from autointerp.errors import ConfigError
from autointerp.llm.assets import DEFAULT_JUDGE
from autointerp.llm.openai_compat import DEFAULT_TIMEOUT_S as DEFAULT_JUDGE_TIMEOUT_S
from autointerp.settings import (
    CACHING,
    DEFAULT_DICTIONARY_HOOKPOINT,
    JUDGES,
    LATENTS,
    RUNNING,
    RUNNING_MODEL,
    SCORING,
    TOKENS_EXPLAINER,
    CacheSettings,
    Checked,
    ControlKind,
    ExplainerSettings,
    SamplingSettings,
    setting,
)

__all__ = [
    "DEFAULT_JUDGE",
    "DEFAULT_JUDGE_TIMEOUT_S",
    "FROZEN",
    "ConfigError",
    "RunConfig",
    "load_config",
    "merge",
    "save_config",
    "set_field",
    "upgrade",
    "with_folder",
]


# ---------------------------------------------------------------- parsers of option values typed on a command line


def parse_latents(text: str) -> list[int | str]:
    from autointerp.latent_choice import LatentSpecError
    from autointerp.latent_choice import parse_latents as parse

    try:
        return parse(text)
    except LatentSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_max_latents(text: str) -> int | None:
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--max-latents must be at least 1 (or 'all')")
    return value


def parse_names(text: str) -> list[str]:
    return [x for x in text.replace(" ", "").split(",") if x]


# ---------------------------------------------------------------- the run

SchemaModeSetting = Literal["auto", "json_schema", "json_object", "none"]


@dataclass
class RunConfig(Checked):
    model: str = setting(
        "smollm2",
        "subject model: 'smollm2' (the embedded SmolLM2-135M-Instruct), a local Hugging Face model folder, or "
        "a Hub repo ORG/NAME (safetensors weights; HF_HUB_OFFLINE=1: the local Hub cache only)",
        cli=CACHING,
        frozen=True,
    )
    model_revision: str | None = setting(
        None, "branch, tag or commit of a Hub --model", cli=CACHING, none_means="main", frozen=True
    )
    dictionary: str = setting(
        "default",
        f"'default' (the shipped TopK SAE on {DEFAULT_DICTIONARY_HOOKPOINT}), 'neurons' (MLP neurons), a sparsify "
        "/ SAELens / Gemma Scope (params.npz) folder, a Hub repo ORG/NAME[/FOLDER] (only the files of --hookpoint(s) "
        "are fetched), or saelens:RELEASE/SAE_ID from sae-lens's directory",
        cli=CACHING,
        frozen=True,
    )
    dictionary_revision: str | None = setting(
        None, "branch, tag or commit of a Hub --dictionary", cli=CACHING, none_means="main", frozen=True
    )
    hookpoint: str | None = setting(
        None,
        "where the dictionary reads: layers.N, layers.N.mlp, or a TransformerLens name like blocks.N.hook_resid_post",
        cli=CACHING,
        none_means="the dictionary's own",
        frozen=True,
    )
    hookpoints: list[str] | None = setting(
        None,
        "several hookpoints of the dictionary, cached in one forward pass and explained in one run: "
        "comma-separated names the dictionary holds (e.g. layers.4,layers.8), or 'all' for every one "
        "(also the way to take every dictionary of a --dictionary list A,B)",
        cli=CACHING,
        parse=parse_names,
        metavar="NAMES|all",
        frozen=True,
    )
    corpus: str = setting(
        "default",
        "'default' (gensim's lee_background.cor, 300 news articles), a text file (one document per line), "
        ".jsonl / .parquet with a text column, or a Hub dataset ORG/NAME, streamed (only the rows --n-tokens "
        "needs are read); an existing local path wins over a Hub id, and a name ending like a file (.txt, .jsonl, "
        ".parquet, .gz...) is always a local file",
        cli=CACHING,
        frozen=True,
    )
    text_column: str = setting(
        "text",
        "column of .jsonl / .parquet files and Hub datasets to read: text, or token ids used as they are "
        "(where the default 'text' is missing, an input_ids or tokens column is taken)",
        cli=CACHING,
        frozen=True,
    )
    corpus_config: str | None = setting(
        None, "config (subset) of a Hub dataset --corpus", cli=CACHING, none_means="the dataset's default", frozen=True
    )
    corpus_split: str = setting(
        "train",
        "split of a Hub dataset --corpus, with an optional slice of rows: train[:100000], train[:1%], train[10%:20%]",
        cli=CACHING,
        frozen=True,
    )
    corpus_revision: str | None = setting(
        None, "branch, tag or commit of a Hub dataset --corpus", cli=CACHING, none_means="main", frozen=True
    )
    corpus_shuffle_seed: int | None = setting(
        None,
        "read the corpus's documents in a random order drawn from this seed (a buffer shuffle: each document "
        "moves at most about --corpus-shuffle-buffer places; delphi shuffles with seed 22)",
        cli=CACHING,
        none_means="no shuffle, the corpus's own order",
        frozen=True,
    )
    corpus_shuffle_buffer: int = setting(
        1000,
        "documents held by the shuffle (read before the first row is cached)",
        cli=CACHING,
        at_least=1,
        frozen=True,
    )
    n_tokens: int = setting(100_000, "tokens to cache at most", cli=CACHING, at_least=1, frozen=True)
    neurons_k: int = setting(
        32, "with --dictionary neurons: strongest neurons kept per token", cli=CACHING, at_least=1, frozen=True
    )
    dtype: Literal["bfloat16", "float16", "float32"] = setting(
        "bfloat16", "subject model dtype", cli=CACHING, frozen=True
    )
    device: str = setting("cpu", "torch device for the subject model", cli=RUNNING_MODEL)
    judge: str = setting(
        DEFAULT_JUDGE,
        "scorer judge: 'qwen2.5-coder-1.5b' (Qwen2.5-Coder-1.5B-Instruct, local), 'smollm2' (small, fast, for "
        "quick runs), a .gguf file, 'openai:MODEL' for any OpenAI-compatible server, or 'vllm:MODEL' (HF folder "
        "or name, 'vllm:smollm2') in process by vLLM",
        cli=JUDGES,
    )
    explainer: str | None = setting(
        None,
        f"explainer model, same choices as --judge; '{TOKENS_EXPLAINER}': no LLM, the label names the tokens most "
        "often marked in the training examples",
        cli=JUDGES,
        none_means="the judge",
    )
    judge_url: str | None = setting(
        None,
        "base URL of the OpenAI-compatible server for openai:MODEL judges, e.g. http://127.0.0.1:8000/v1; "
        "several servers of the same model, comma-separated, share the requests (each to the least busy one)",
        cli=JUDGES,
        none_means="api.openai.com",
    )
    judge_timeout: float = setting(
        DEFAULT_JUDGE_TIMEOUT_S,
        "seconds an HTTP judge may take to answer one request before it is retried (after waiting as long "
        "again, since the server may still be busy with it); long, for a busy local server",
        cli=JUDGES,
        metavar="SECONDS",
        above=0,
    )
    api_key_env: str = setting(
        "OPENAI_API_KEY",
        "name of the environment variable holding the API key; the key itself is never written",
        cli=JUDGES,
    )
    explainer_url: str | None = setting(
        None,
        "base URL of the OpenAI-compatible server for an openai:MODEL --explainer, when it is not the judge's "
        "(a capable explainer, a cheap judge); several comma-separated share the requests",
        cli=JUDGES,
        none_means="--judge-url",
    )
    explainer_api_key_env: str | None = setting(
        None,
        "name of the environment variable holding the explainer server's API key",
        cli=JUDGES,
        none_means="--api-key-env",
    )
    schema_mode: SchemaModeSetting = setting(
        "auto",
        "how an OpenAI-compatible server is asked for JSON: json_schema (OpenAI's form), json_object with the "
        "schema (llama.cpp's server, vLLM), none (unconstrained); auto: json_schema for api.openai.com, else "
        "json_object",
        cli=JUDGES,
    )
    no_logprobs: bool = setting(False, "the server gives no logprobs: judges answer in text (no AUROC)", cli=JUDGES)
    prompt_logprobs: bool = setting(
        False,
        "the server echoes prompt logprobs (/completions with echo=True, e.g. vLLM): needed by surprisal, "
        "used by simulation (local judges always have them)",
        cli=JUDGES,
    )
    response_cache: bool = setting(
        True,
        "do not answer repeated requests from the response cache",
        cli=JUDGES,
        flag="--no-cache",
        negate=True,
    )
    response_cache_path: str | None = setting(
        None,
        "SQLite file of the response cache",
        cli=JUDGES,
        flag="--response-cache",
        none_means="~/.cache/autointerp/responses.sqlite",
    )
    prices: str | None = setting(
        None,
        'price table for a cost estimate: JSON or TOML, {"MODEL": {"prompt": USD per 1M tokens, "completion": ...}}',
        cli=JUDGES,
    )
    scorers: list[str] = setting(
        help="comma-separated scorer names", factory=lambda: ["detection", "fuzzing"], cli=SCORING, parse=parse_names
    )
    controls: ControlKind = setting(
        "shuffled",
        "shuffled: also score each latent's held-out examples with another latent's label (a seeded "
        "derangement), the chance level beside each score, <scorer>_control_* columns (doubles the scoring "
        "cost); none: skip it",
        cli=SCORING,
    )
    scoring: dict[str, dict[str, Any]] = setting(
        help="each scorer's own settings, by section (the scorer modules declare them): plain values, "
        "checked by the scorer registry",
        factory=dict,
    )
    latents: list[int | str] | None = setting(
        None,
        "latent indices and half-open ranges, e.g. 3,17,100:200 (= 3, 17 and 100..199), at every hookpoint",
        cli=LATENTS,
        parse=parse_latents,
    )
    max_latents: int | None = setting(
        10,
        "how many latents per hookpoint (the first ones that fire often enough); 'all' for every latent",
        cli=LATENTS,
        parse=parse_max_latents,
        at_least=1,
    )
    sample_latents: int | None = setting(
        None,
        "instead of the first ones, a random sample of N latents per hookpoint among those that fire often "
        "enough (drawn from --seed; with --latents, among those named): the usual way to evaluate a large "
        "dictionary",
        cli=LATENTS,
        metavar="N",
        at_least=1,
    )
    concurrency: int = setting(
        1,
        "latents in flight at once; one latent's questions already fill a local judge's batches",
        cli=RUNNING,
        at_least=1,
    )
    judge_concurrency: int | None = setting(
        None,
        "judge requests in flight; when more wait, one latent's prompts go first, so a server's prefix cache is hit",
        cli=RUNNING,
        none_means="16 for llama.cpp in process, 8 over HTTP, 128 for vLLM",
        at_least=1,
    )
    cache: CacheSettings = setting(factory=CacheSettings, frozen=True)
    sampling: SamplingSettings = setting(factory=SamplingSettings, frozen=True)
    explain: ExplainerSettings = setting(factory=ExplainerSettings)

    @property
    def explainer_model(self) -> str:
        return self.explainer or self.judge

    @property
    def requested_hookpoints(self) -> list[str] | None:
        """The hookpoints asked for: `hookpoints`, else the one `hookpoint`, else None (the dictionary's own)."""
        if self.hookpoints:
            return list(self.hookpoints)
        return [self.hookpoint] if self.hookpoint else None

    def check(self) -> None:
        super().check()
        self._check_hookpoints()
        from autointerp.corpus_split import parse_split

        try:
            parse_split(self.corpus_split)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for section, values in self.scoring.items():
            if not isinstance(section, str) or not isinstance(values, dict):
                raise ConfigError(f"scoring must map section names to settings, not {section!r}: {values!r}")
        if self.explain.style == "contrastive" and self.sampling.n_train_negatives < 1:
            raise ConfigError(
                "--explainer-style contrastive shows non-activating examples: --n-train-negatives must be at least 1"
            )
        if self.explainer_model == TOKENS_EXPLAINER and (
            self.explain.best_of > 1 or self.explain.style == "contrastive"
        ):
            raise ConfigError(
                f"--explainer {TOKENS_EXPLAINER} makes one label from the marked tokens, with no LLM: it takes no "
                "--best-of and no --explainer-style contrastive"
            )

    def _check_hookpoints(self) -> None:
        """`--hookpoint` and `--hookpoints` are two ways to say one thing; `--latents` must be indices and
        well-formed ranges (a library caller's list, or a hand-edited config.json)."""
        from autointerp.latent_choice import LatentSpecError, check_spec

        if self.hookpoint and self.hookpoints:
            raise ConfigError("give --hookpoint NAME (one) or --hookpoints NAMES|all (several), not both")
        if self.hookpoints is not None:
            if not self.hookpoints:
                raise ConfigError("--hookpoints needs names (layers.4,layers.8) or 'all'")
            if "all" in self.hookpoints and len(self.hookpoints) > 1:
                raise ConfigError(f"--hookpoints is either 'all' or names, not both: {','.join(self.hookpoints)}")
            if len(set(self.hookpoints)) != len(self.hookpoints):
                raise ConfigError(f"--hookpoints names a hookpoint twice: {','.join(self.hookpoints)}")
        try:
            check_spec(self.latents or [])
        except LatentSpecError as e:
            raise ConfigError(f"--latents: {e}") from None

    def validate(self) -> RunConfig:
        """Every check of the config's own fields, run again before a stage (fields can be assigned after
        the config was made). Raises `ConfigError`. The scorer names and the scorers' own settings are
        the registry's to check: a stage runs `scorers.registry.check_config`, which calls this.

        Loading a config.json does not call this: a folder written by a newer version may name a
        scorer this one does not know, and its results can still be read."""
        for part in (self.cache, self.sampling, self.explain, self):
            part.check()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """A config from its `to_dict()` form, or an older version's (`upgrade`); keys this version does
        not know are ignored."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for k, v in upgrade(data).items():
            if k not in known:
                continue
            nested = settings_class(known[k])
            if nested is not None and isinstance(v, dict):
                sub_known = {f.name for f in fields(nested)}
                v = nested(**{a: b for a, b in v.items() if a in sub_known})
            elif k == "scoring" and isinstance(v, dict):
                v = copy.deepcopy(v)
            kwargs[k] = v
        return cls(**kwargs)


# where settings a scorer now owns lived in config files written before it did: whole sections at the
# top, or single fields
_OLD_SECTIONS = ("classifier", "intervention")
_OLD_FIELDS = {"fuzz_negatives": ("fuzzing", "negatives"), "embedding_model": ("embedding", "model")}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A config's dict form with the scorer settings of older versions moved into `scoring`; what the
    dict's own `scoring` says wins over an old key."""
    old = [k for k in (*_OLD_SECTIONS, *_OLD_FIELDS) if k in data]
    if not old:
        return data
    out = {k: v for k, v in data.items() if k not in old}
    scoring: dict[str, dict[str, Any]] = {}
    for section in _OLD_SECTIONS:
        if isinstance(data.get(section), dict):
            scoring[section] = dict(data[section])
    for key, (section, name) in _OLD_FIELDS.items():
        if key in data:
            scoring.setdefault(section, {})[name] = data[key]
    for section, values in (data.get("scoring") or {}).items():
        scoring[section] = {**scoring.get(section, {}), **values}
    out["scoring"] = scoring
    return out


def settings_class(f: dataclasses.Field) -> type[Any] | None:
    """The settings class of a nested field (`cache`, `sampling`...), None for a plain one."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


FROZEN: tuple[str, ...] = tuple(f.name for f in fields(RunConfig) if f.metadata.get("frozen"))


# ---------------------------------------------------------------- the run folder's config.json


def environment() -> dict[str, str]:
    """Versions that can change results, recorded beside the config."""
    import importlib.metadata as md

    from autointerp.prompting import prompts_hash
    from autointerp.version import __version__

    out = {"autointerp": __version__, "python": platform.python_version(), "prompts_sha256": prompts_hash()}
    for pkg in ("torch", "transformers", "llama-cpp-python", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def save_config(path: Path, config: RunConfig, resolved: dict[str, Any] | None = None) -> None:
    from autointerp.cache.store import atomic_write_bytes

    data = {"config": config.to_dict(), "resolved": resolved or {}, "environment": environment()}
    atomic_write_bytes(path, json.dumps(data, indent=2).encode())


def load_config(path: Path) -> tuple[RunConfig, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
        return RunConfig.from_dict(data["config"]), data.get("resolved", {})
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ConfigError) as e:
        raise ConfigError(f"unreadable run config {path}: {e}") from None


def with_folder(config: RunConfig, folder: RunConfig) -> RunConfig:
    """A copy of `config` whose fields that define the run folder (FROZEN) are `folder`'s."""
    out = RunConfig.from_dict(config.to_dict())
    for name in FROZEN:
        setattr(out, name, copy.deepcopy(getattr(folder, name)))
    return out


def merge(stored: RunConfig, requested: RunConfig, explicit: set[str]) -> RunConfig:
    """The command's options (given or default) on the folder's stored cache and split settings; an
    option that defines the folder must agree with what it has. Nothing else is taken from `stored`."""
    clashes = []
    for name in sorted(explicit):
        if name.split(".")[0] in FROZEN and _get(stored, name) != _get(requested, name):
            clashes.append(f"{name}: run has {_get(stored, name)!r}, requested {_get(requested, name)!r}")
    merged = with_folder(requested, stored)
    if clashes:
        raise ConfigError(
            "this run folder was cached/sampled with other settings ("
            + "; ".join(clashes)
            + "). Use a new --out, or drop these options."
        )
    return merged


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def set_field(obj: Any, dotted: str, value: Any) -> None:
    """Set a (dotted, nested) config field: "sampling.n_test"."""
    *head, last = dotted.split(".")
    for part in head:
        obj = getattr(obj, part)
    setattr(obj, last, value)
