"""One object describes a run; it is written next to the outputs as config.json.

Fields in `FROZEN` define the activation cache and the train/test split. Once a run folder has
them, later stages (`explain`, `score`, a resumed `run`) must agree, because scoring with a
different split than the explainer saw would silently leak or mix examples. They are the only
fields a folder remembers for the next command: every other option (judge, latents, scorers...)
belongs to the command that gives it, so a command that failed cannot leave its choices behind
for the next one, and a command does what its own line says.
"""

from __future__ import annotations

import copy
import json
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from autointerp.cache.build import CacheSettings
from autointerp.errors import ConfigError
from autointerp.explainers import ExplainerSettings
from autointerp.llm.openai_compat import DEFAULT_TIMEOUT_S as DEFAULT_JUDGE_TIMEOUT_S
from autointerp.sampling import SamplingSettings
from autointerp.scorers.classify import ClassifierSettings
from autointerp.scorers.intervention import InterventionSettings

DEFAULT_JUDGE = "qwen2.5-coder-1.5b"
DEFAULT_N_TOKENS = 100_000
DEFAULT_MAX_LATENTS = 10

FROZEN = (
    "model",
    "model_revision",
    "dictionary",
    "dictionary_revision",
    "hookpoint",
    "corpus",
    "text_column",
    "n_tokens",
    "neurons_k",
    "dtype",
    "cache",
    "sampling",
)


@dataclass
class RunConfig:
    model: str = "smollm2"  # "smollm2" = the embedded SmolLM2-135M-Instruct, a local HF model folder, or ORG/NAME
    model_revision: str | None = None  # branch, tag or commit of a Hub model (None = main)
    # "default" = the shipped TopK SAE; a local sparsify/SAELens/Gemma Scope folder; ORG/NAME[/FOLDER] on
    # the Hub; saelens:RELEASE/SAE_ID; "neurons"
    dictionary: str = "default"
    dictionary_revision: str | None = None  # branch, tag or commit of a Hub dictionary (None = main)
    hookpoint: str | None = None  # None = the dictionary's own (the default SAE: layers.3)
    corpus: str = "default"  # "default" = gensim's lee_background.cor; or a .txt/.jsonl/.parquet file
    text_column: str = "text"
    n_tokens: int = DEFAULT_N_TOKENS
    neurons_k: int = 32  # with dictionary="neurons": strongest neurons kept per token
    dtype: str = "bfloat16"  # subject model dtype while caching
    device: str = "cpu"
    judge: str = DEFAULT_JUDGE  # scorer judge
    explainer: str | None = None  # explainer model; None = same as judge; "tokens" = the marked tokens, no LLM
    judge_url: str | None = None  # base URL for "openai:MODEL" judges (None = api.openai.com)
    judge_timeout: float = DEFAULT_JUDGE_TIMEOUT_S  # seconds per HTTP request attempt (a busy local server is slow)
    api_key_env: str = "OPENAI_API_KEY"  # the *name* of the variable holding the key, never the key
    no_logprobs: bool = False  # the HTTP judge's server gives no logprobs
    prompt_logprobs: bool = False  # the HTTP judge's server echoes prompt logprobs (surprisal, simulation)
    response_cache: bool = True  # answer repeated deterministic requests from a SQLite file
    response_cache_path: str | None = None  # None = <cache dir>/responses.sqlite
    prices: str | None = None  # JSON/TOML price table (USD per million tokens) for a cost estimate
    scorers: list[str] = field(default_factory=lambda: ["detection", "fuzzing"])
    # "shuffled": also score each latent's held-out examples with another latent's label (its chance level)
    controls: str = "shuffled"
    fuzz_negatives: str = "silent"
    embedding_model: str = "default"  # embedding scorer: "default" = bundled all-MiniLM-L6-v2, or a folder / id
    latents: list[int] | None = None
    max_latents: int | None = DEFAULT_MAX_LATENTS  # None = every latent that fires often enough
    concurrency: int = 1  # latents in flight
    judge_concurrency: int | None = None  # judge requests in flight; None = 1 llama.cpp, 8 HTTP, 128 vLLM
    cache: CacheSettings = field(default_factory=CacheSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    explain: ExplainerSettings = field(default_factory=ExplainerSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    intervention: InterventionSettings = field(default_factory=InterventionSettings)

    @property
    def explainer_model(self) -> str:
        return self.explainer or self.judge

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        nested = {
            "cache": CacheSettings,
            "sampling": SamplingSettings,
            "explain": ExplainerSettings,
            "classifier": ClassifierSettings,
            "intervention": InterventionSettings,
        }
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for k, v in data.items():
            if k not in known:
                continue
            if k in nested and isinstance(v, dict):
                sub_known = {f.name for f in fields(nested[k])}
                v = nested[k](**{a: b for a, b in v.items() if a in sub_known})
            kwargs[k] = v
        return cls(**kwargs)


def environment() -> dict[str, str]:
    """Versions that can change results, recorded beside the config."""
    import importlib.metadata as md

    from autointerp import __version__
    from autointerp.prompting import prompts_hash

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
    except (json.JSONDecodeError, KeyError, TypeError) as e:
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
    for name in explicit:
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
