"""Judges by name, built from a run's settings."""

from __future__ import annotations

from autointerp.config import RunConfig
from autointerp.llm.base import Judge


def make_judge(name: str, config: RunConfig) -> Judge:
    """A judge by name: "openai:MODEL" over HTTP, "vllm:MODEL" in process by vLLM, else a local GGUF model.

    Layers, outside in: the response cache (a hit never waits for a slot), the ordering gate (bounded
    requests in flight, served by latent and stage so shared prefixes stay together), the backend.
    """
    if name.startswith("openai:"):
        from autointerp.llm.openai_compat import OpenAIJudge
        from autointerp.llm.spread import SpreadJudge, split_urls

        urls = split_urls(config.judge_url)
        slots = config.judge_concurrency or 8 * len(urls)  # 8 in flight per server
        servers: list[Judge] = [
            OpenAIJudge(
                name.removeprefix("openai:"),
                url,
                api_key_env=config.api_key_env,
                supports_logprobs=not config.no_logprobs,
                max_concurrency=slots,
                supports_prompt_logprobs=config.prompt_logprobs,
                timeout=config.judge_timeout,
            )
            for url in urls
        ]
        # several servers of one model (--judge-url A,B): each request to the least busy one
        judge: Judge = servers[0] if len(servers) == 1 else SpreadJudge(servers)
        where = ",".join(sorted(u or "https://api.openai.com/v1" for u in urls))
        namespace = f"openai:{where}:{judge.model}"
    elif name.startswith("vllm:"):
        from autointerp.llm.vllm_offline import load_vllm_judge

        slots = config.judge_concurrency or 128  # the engine batches whatever is in flight together
        judge = load_vllm_judge(name.removeprefix("vllm:"))
        namespace = name
    else:
        from autointerp.llm.local import load_local_judge

        slots = config.judge_concurrency or 1  # llama.cpp in process runs one request at a time anyway
        judge = load_local_judge(name)
        namespace = f"llama.cpp:{judge.model}"
    return wrap_judge(judge, config, namespace=namespace, slots=slots)


def wrap_judge(backend: Judge, config: RunConfig, *, namespace: str, slots: int) -> Judge:
    """A backend behind the ordering gate (`slots` requests in flight) and, unless the config turns it off,
    the response cache under `namespace` (which must name the backend and model: two never share answers).
    The HTTP service wraps the judges it is handed (scripted ones in tests, an instant one in the bench) the
    same way as the ones it loads by name."""
    from autointerp.llm.assets import default_cache_dir
    from autointerp.llm.ordering import OrderedJudge

    judge: Judge = OrderedJudge(backend, slots)
    if not config.response_cache:
        return judge
    from autointerp.llm.cache import CachedJudge

    path = config.response_cache_path or default_cache_dir() / "responses.sqlite"
    return CachedJudge(judge, path, namespace=namespace)
