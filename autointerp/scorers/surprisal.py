"""Surprisal: does reading the explanation make the held-out excerpts that activate the latent easier
to predict, and the silent ones not?

Each held-out example's text is scored twice by a judge with prompt logprobs (teacher forcing, no
generation), after a prefix describing it: once with the explanation as the description, once with a
neutral one (`prompts/surprisal/neutral.md`). The example's loss is the mean negative logprob of its
own tokens (found by their character offsets; the prefix's tokens are not counted), and its loss
reduction is loss(neutral) - loss(explanation), in nats per token. A good explanation lowers the
loss of activating examples more than that of silent ones.

Metrics: `auroc` (do loss reductions rank activating examples above silent ones), and the mean
reduction over activating (`reduction_activating`) and silent (`reduction_silent`) examples.

Judge calls: two per held-out example. All explanation texts go first, then all neutral ones, so a
judge that reuses a shared prefix (the embedded llama.cpp judge) evaluates each prefix once; the
neutral texts do not depend on the explanation, so the response cache answers them when another
explanation of the same latent is scored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from autointerp.llm.asking import score_text
from autointerp.llm.base import Judge, PromptToken
from autointerp.prompting import load_prompt, render
from autointerp.records import Example, Explanation, Judgment, LatentRecord, Score, Usage
from autointerp.scorers.base import Scorer
from autointerp.scorers.metrics import auroc, mean_or_none
from autointerp.scorers.registry import register


@dataclass
class Loss:
    value: float | None  # mean negative logprob of the example's tokens, nats per token
    error: str = ""


def text_prefix(description: str) -> str:
    """`prompts/surprisal/text.md` up to its closing `{{ text }}`, with the description filled in."""
    template = load_prompt("surprisal/text.md")
    head, found, tail = template.partition("{{ text }}")
    if not found or tail.strip():
        raise ValueError("prompts/surprisal/text.md must end with {{ text }}")
    return render(head, description=description)


def example_loss(tokens: list[PromptToken], start: int) -> Loss:
    """Mean -logprob of the tokens that begin at or after `start` (the example's own tokens)."""
    lps = [t.logprob for t in tokens if t.offset >= start and t.logprob is not None]
    if not lps:
        return Loss(None, "the judge returned no tokens of the example")
    return Loss(-sum(lps) / len(lps))


@register
class SurprisalScorer(Scorer):
    name = "surprisal"
    metrics = ("auroc", "reduction_activating", "reduction_silent")
    summary = "loss of excerpts after the explanation; needs prompt logprobs"
    judge_capability = "prompt_logprobs"

    def unfit_message(self, judge: Judge) -> str:
        return (
            f"the surprisal scorer needs a judge that gives prompt logprobs (teacher forcing); "
            f"{judge.model} does not: use a local judge (qwen2.5-coder-1.5b, smollm2, a .gguf), "
            f"vllm:MODEL, or an openai:MODEL server that echoes them, with --prompt-logprobs"
        )

    async def __call__(self, record: LatentRecord, explanation: Explanation, judge: Judge) -> Score:
        self.check_judge(judge)
        examples = record.test + record.negatives
        texts = [e.text.lstrip() for e in examples]
        usage = Usage()
        described = text_prefix(explanation.text)
        neutral = text_prefix(load_prompt("surprisal/neutral.md").strip())
        # explanation texts first, then the neutral ones: each run of calls shares its prefix
        losses = await asyncio.gather(
            *(self._loss(described, t, judge, usage) for t in texts),
            *(self._loss(neutral, t, judge, usage) for t in texts),
        )
        with_expl, without = losses[: len(texts)], losses[len(texts) :]
        judgments = [self._judgment(e, t, a, b) for e, t, a, b in zip(examples, texts, with_expl, without, strict=True)]
        answered = [j for j in judgments if j.value is not None]
        truth = [j.activating for j in answered]
        drops = [float(j.value) for j in answered if j.value is not None]
        metrics = {
            "auroc": auroc(truth, drops) if answered else None,
            "reduction_activating": mean_or_none([j.value for j in answered if j.activating and j.value is not None]),
            "reduction_silent": mean_or_none([j.value for j in answered if not j.activating and j.value is not None]),
        }
        return Score(
            latent=record.latent,
            scorer=self.name,
            metrics=metrics,
            n_examples=len(examples),
            n_failed=len(examples) - len(answered),
            judgments=judgments,
            usage=usage,
        )

    @staticmethod
    async def _loss(prefix: str, text: str, judge: Judge, usage: Usage) -> Loss:
        if not text:
            return Loss(None, "the example has no text")

        def parse(tokens: list[PromptToken]) -> tuple[float | None, str]:
            loss = example_loss(tokens, len(prefix))
            return loss.value, loss.error

        asked = await score_text(judge, prefix + text, parse, usage=usage)
        return Loss(asked.value, asked.error)

    @staticmethod
    def _judgment(example: Example, text: str, described: Loss, neutral: Loss) -> Judgment:
        ok = described.value is not None and neutral.value is not None
        drop = neutral.value - described.value if ok else None  # type: ignore[operator]
        detail = (
            (
                f"loss {described.value:.3f} with the explanation, {neutral.value:.3f} with the neutral "
                f"description (nats/token)"
            )
            if ok
            else ""
        )
        return Judgment(
            window=example.window,
            activating=example.activating,
            prediction=None if drop is None else drop > 0,
            probability=None,
            max_activation=example.max_activation,
            quantile=example.quantile,
            error=described.error or neutral.error,
            text=text,
            value=None if drop is None else round(drop, 6),
            detail=detail,
        )
