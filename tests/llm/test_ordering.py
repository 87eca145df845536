"""The ordering gate: bounded judge requests in flight, one latent's prompts served together."""

from __future__ import annotations

import asyncio

from helpers.planted import yes_no
from helpers.tiny_subjects import decode_ids

from autointerp.config import RunConfig
from autointerp.llm.ordering import OrderedJudge, PriorityGate, judge_priority
from autointerp.llm.scripted import ScriptedJudge
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, select_latents
from autointerp.results import RunFiles
from autointerp.sampling import Sampler, SamplingSettings
from autointerp.scorers import DetectionScorer, FuzzingScorer


def test_waiters_are_served_by_key_then_arrival():
    async def main() -> list[str]:
        gate = PriorityGate(1)
        served: list[str] = []
        await gate.acquire(())  # hold the only slot while the others queue up

        async def waiter(name: str, key: tuple[int, ...]) -> None:
            await gate.acquire(key)
            served.append(name)
            gate.release()

        tasks = [
            asyncio.create_task(waiter(n, k))
            for n, k in [("c", (3,)), ("a1", (1, 2)), ("b", (2,)), ("a0", (1, 0)), ("a2", (1, 2))]
        ]
        await asyncio.sleep(0)
        gate.release()
        await asyncio.gather(*tasks)
        return served

    assert asyncio.run(main()) == ["a0", "a1", "a2", "b", "c"]


def test_a_cancelled_waiter_does_not_leak_a_slot():
    async def main() -> int:
        gate = PriorityGate(2)
        await gate.acquire((0,))
        await gate.acquire((0,))
        doomed = asyncio.create_task(gate.acquire((1,)))
        later = asyncio.create_task(gate.acquire((2,)))
        await asyncio.sleep(0)
        doomed.cancel()
        gate.release()  # must go to `later`, not to the cancelled waiter
        await asyncio.wait_for(later, 1)
        gate.release()
        gate.release()
        return gate._busy

    assert asyncio.run(main()) == 0


def test_at_most_slots_requests_are_in_flight():
    in_flight, peak = 0, 0

    class Slow(ScriptedJudge):
        async def chat(self, messages, **kw):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.001)
            in_flight -= 1
            return await super().chat(messages, **kw)

    judge = OrderedJudge(Slow(lambda m: "Yes"), 3)

    async def main() -> None:
        await asyncio.gather(*(judge.chat([{"role": "user", "content": str(i)}]) for i in range(20)))

    asyncio.run(main())
    assert peak == 3


def _switches(keys: list[tuple[int, ...]]) -> int:
    return sum(1 for a, b in zip(keys, keys[1:], strict=False) if a != b)


def _run_interleaved(tmp_path, tiny_cache, gated: bool) -> list[tuple[int, ...]]:
    """Score 4 latents at once against a judge that takes time; the (latent, stage) keys in serving order
    (run under `inline_threads`, so the order the gate sees does not depend on the machine's speed)."""
    from autointerp.llm.ordering import current_priority

    arrivals: list[tuple[int, ...]] = []

    class Slow(ScriptedJudge):
        async def chat(self, messages, **kw):
            arrivals.append(current_priority())
            await asyncio.sleep(0.0005)
            return await super().chat(messages, **kw)

    sampling = SamplingSettings(n_train=8, n_test=6, n_negatives=6, n_train_negatives=2, min_examples=10)
    config = RunConfig(sampling=sampling, max_latents=4)
    files = RunFiles(tmp_path / ("gated" if gated else "plain"))
    files.prepare()
    latents, _ = select_latents(tiny_cache, config)
    judge = Slow(lambda m: yes_no(0.7))
    front = OrderedJudge(judge, 1) if gated else judge
    explainer = ScriptedJudge(lambda m: "[EXPLANATION]: tokens t1 to t9")
    worker = LatentWorker(
        files,
        config,
        Sampler(tiny_cache, decode_ids, config.sampling),
        explainer,
        front,
        [DetectionScorer(), FuzzingScorer()],
        {"explain", "score"},
        RunSummary(),
    )
    asyncio.run(process_latents(latents, worker, concurrency=4, progress=False))
    return arrivals


async def _turns(n: int) -> None:
    """Wait `n` turns of the event loop: a clock that runs the same on any machine, as timers do not (a
    pause of the process between two tasks' timers shifts one against the other)."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_the_gate_serves_staggered_requests_grouped_by_key():
    """Four sources issue prompts a little apart (like items prepared one by one); first-come-first-served
    interleaves them, the gate serves each source's prompts back to back once they queue up."""
    served: list[int] = []

    class Slow(ScriptedJudge):
        async def chat(self, messages, **kw):
            served.append(int(messages[0]["content"]))
            await _turns(8)  # twice as long as a source takes to issue its next prompt
            return await super().chat(messages, **kw)

    async def source(judge, i: int) -> None:
        async def one(j: int) -> None:
            await _turns(4 * j + i)
            with judge_priority(i):
                await judge.chat([{"role": "user", "content": str(i)}])

        await asyncio.gather(*(one(j) for j in range(10)))

    def run(judge) -> list[int]:
        served.clear()

        async def main() -> None:
            await asyncio.gather(*(source(judge, i) for i in range(4)))

        asyncio.run(main())
        return list(served)

    plain = run(OrderedJudge(Slow(lambda m: "Yes"), 40))  # never waits: arrival order
    gated = run(OrderedJudge(Slow(lambda m: "Yes"), 1))
    assert sorted(plain) == sorted(gated)
    assert _switches(gated) <= 4 < 20 < _switches(plain)


def test_in_the_pipeline_earlier_latents_finish_first(tmp_path, tiny_cache, inline_threads):
    gated = _run_interleaved(tmp_path, tiny_cache, gated=True)
    groups = sorted(set(gated))
    assert len(groups) == 4 * 2
    last = {k: max(i for i, g in enumerate(gated) if g == k) for k in groups}
    assert [last[k] for k in groups] == sorted(last.values())  # (latent, scorer) groups end in order
    # each group is served in one run, except that one prompt of the next latent may slip in while a
    # latent moves from one scorer to the next
    assert _switches(gated) <= 2 * (len(groups) - 1)


def test_priority_keys_nest_and_reset():
    from autointerp.llm.ordering import current_priority

    with judge_priority(2):
        with judge_priority(1):
            assert current_priority() == (2, 1)
        assert current_priority() == (2,)
    assert current_priority() == ()
