"""Simulation (OpenAI automated-interpretability): from the explanation alone, the judge predicts how
strongly the latent fires on every token of each held-out excerpt; the score is how well its
predictions correlate with the true activations.

Two ways to ask, picked by `mode`:
- "logprobs" ("all at once", needs a judge with prompt logprobs): one text per example lists its
  tokens one per line, each followed by a tab and a slot. Teacher-forcing that text, the judge's
  distribution over the digits 0-9 at each slot (read from the top logprobs) gives an expected
  activation for that token. One pass per example, nothing generated, nothing to parse.
  Each slot is filled with "0", not OpenAI's "unknown": after a few lines of "unknown" the embedded
  judges copy it with nearly all their probability, and by the end of a 32-token window no digit is
  left among their top 20 alternatives (7 of 10 windows unreadable with Qwen2.5-1.5B, 10 of 10 with
  SmolLM2; none with "0"). A 0 is also what most tokens truly are, so the lines before a slot stay
  plausible; the cost is that an earlier firing token of the same excerpt is shown as silent.
- "json" (any chat judge): the judge is asked for `{"activations": [...]}`, one number per token,
  constrained by a schema of exactly that length. An answer of the wrong length, that cannot be read
  or that the token limit cut off is re-asked up to `max_reasks` times and then recorded as a failure
  of that example: excluded from the metrics and counted, never read as zeros.

The scale is 0-9 rather than OpenAI's 0-10 because the embedded judges' tokenizers (Qwen2.5, SmolLM2)
write 10 as the two tokens "1", "0": at a slot, a 10 would read as a 1. True activations are scaled
to the same 0-9 by the latent's largest activation; Pearson correlation ignores the scale, so this
only decides what the few-shot shows and what the judgments record.

Metrics: `correlation` (OpenAI's headline: all tokens of all answered examples, activating and not,
concatenated), `example_correlation` (the mean of per-example correlations, over examples where one
is defined: the predictions and activations both vary) and `auroc` (does the example's largest
predicted activation rank activating examples above silent ones).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from autointerp.llm.asking import Request, ask, score_text
from autointerp.llm.base import CUT_OFF, Judge, PromptToken, Reply, can_score_text
from autointerp.prompting import clean_token, load_prompt, render
from autointerp.records import Example, Explanation, Judgment, LatentRecord, Score, Usage
from autointerp.scorers.base import Scorer, ScorerContext, ScorerSettings, UnfitJudge
from autointerp.scorers.classify import extract_json
from autointerp.scorers.metrics import auroc, correlation, mean_or_none
from autointerp.scorers.registry import register
from autointerp.settings import SCORING, setting

if TYPE_CHECKING:
    from autointerp.config import RunConfig

MAX_LEVEL = 9
SLOT = "0"  # what fills each token's activation slot in the all-at-once text (see the module docstring)
DIGITS = {str(d): d for d in range(MAX_LEVEL + 1)}


SimulationMode = Literal["auto", "logprobs", "json"]


@dataclass
class SimulationSettings(ScorerSettings):
    """How the simulation scorer asks for per-token activations."""

    section = "simulation"

    mode: SimulationMode = setting(
        "auto",
        "simulation: auto: logprobs when the judge gives prompt logprobs (all tokens at once, teacher-forced), "
        "else json; logprobs: insist on prompt logprobs; json: ask for a JSON list of activations",
        cli=SCORING,
        flag="--simulation-mode",
    )
    top_logprobs: int = setting(20, "alternatives read at each slot; the digits must be among them", at_least=1)
    max_reasks: int = setting(
        1, "json mode only (prompt logprobs are deterministic: asking again changes nothing)", at_least=0
    )


@dataclass
class Simulated:
    """One example's predictions (None when the answer could not be used) and what to record about it."""

    example: Example
    predicted: list[float] | None
    shown: str
    answer: str = ""
    error: str = ""


def show_token(token: str) -> str:
    """A token as one line of the all-at-once text: no newline or tab of its own, no delimiter characters."""
    return clean_token(token).replace("\t", "⇥")


def simulation_text(explanation: str, tokens: list[str]) -> tuple[str, str, list[int]]:
    """The all-at-once text for one example, its token block, and the character offset of each slot."""
    lines = [f"{show_token(t)}\t{SLOT}" for t in tokens]
    block = "\n".join(lines)
    text = render(load_prompt("simulation/all_at_once.md"), explanation=explanation, lines=block)
    if not text.endswith(block):
        raise ValueError("prompts/simulation/all_at_once.md must end with {{ lines }}")
    slots, pos = [], len(text) - len(block)
    for line in lines:
        slots.append(pos + len(line) - len(SLOT))
        pos += len(line) + 1
    return text, block, slots


def expected_level(token: PromptToken) -> float | None:
    """The expected digit at a slot: sum of d * P(d) over the digits among the top logprobs, renormalised."""
    mass = total = 0.0
    for alt, lp in token.top.items():
        d = DIGITS.get(alt.strip())
        if d is not None:
            p = math.exp(lp)
            mass += p
            total += d * p
    return total / mass if mass > 0 else None


def read_slots(tokens: list[PromptToken], slots: list[int]) -> tuple[list[float] | None, str]:
    """The expected level at each slot, or None and why not (a slot no token starts at, no digit there)."""
    by_offset = {t.offset: t for t in tokens}
    out: list[float] = []
    for i, offset in enumerate(slots):
        token = by_offset.get(offset)
        if token is None:
            return None, f"no judge token starts at the slot of token {i} (its tokenizer joins the slot to the tab)"
        level = expected_level(token)
        if level is None:
            return None, f"no digit 0-{MAX_LEVEL} among the top logprobs at the slot of token {i}"
        out.append(level)
    return out, ""


def parse_levels(text: str, n: int) -> tuple[list[float] | None, str]:
    """n numbers in 0..MAX_LEVEL from `{"activations": [...]}` (or a bare list), else None and why not."""
    data = extract_json(text)
    if isinstance(data, dict):
        data = data.get("activations")
    if not isinstance(data, list):
        return None, "not a JSON list of activations"
    if len(data) != n:
        return None, f"{len(data)} activations for {n} tokens"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_LEVEL for v in data):
        return None, f"activations must be numbers from 0 to {MAX_LEVEL}"
    return [float(v) for v in data], ""


def levels_schema(n: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "activations": {
                "type": "array",
                "items": {"type": "integer", "enum": list(DIGITS.values())},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": ["activations"],
    }


def true_levels(example: Example, top: float) -> list[float]:
    """The example's activations on the 0-9 scale, 9 being the latent's largest activation."""
    return [MAX_LEVEL * max(a, 0.0) / top if top > 0 else 0.0 for a in example.activations]


@register
class SimulationScorer(Scorer):
    name = "simulation"
    metrics = ("correlation", "example_correlation", "auroc")
    summary = "the judge predicts each token's activation"
    settings_classes = (SimulationSettings,)

    def __init__(self, settings: SimulationSettings | None = None):
        self.settings = settings or SimulationSettings()

    @classmethod
    def from_config(cls, config: RunConfig, context: ScorerContext) -> Scorer:
        return cls(SimulationSettings.of(config))

    def check_judge(self, judge: Judge | None) -> None:
        """Mode 'logprobs' with a judge that has no prompt logprobs fails here, before any latent."""
        super().check_judge(judge)
        assert judge is not None
        self.mode_for(judge)

    def mode_for(self, judge: Judge) -> str:
        mode = self.settings.mode
        if mode == "auto":
            return "logprobs" if can_score_text(judge) else "json"
        if mode == "logprobs" and not can_score_text(judge):
            raise UnfitJudge(
                f"simulation mode 'logprobs' needs a judge with prompt logprobs; {judge.model} "
                f"({type(judge).__name__}) has none: use mode 'json'"
            )
        return mode

    async def __call__(self, record: LatentRecord, explanation: Explanation, judge: Judge) -> Score:
        mode = self.mode_for(judge)
        examples = record.test + record.negatives
        usage = Usage()
        ask = self._all_at_once if mode == "logprobs" else self._json
        results = await asyncio.gather(*(ask(e, explanation.text, judge, usage) for e in examples))
        top = max([record.stats.max_activation] + [e.max_activation for e in examples])
        return self._score(record, results, top, usage)

    async def _all_at_once(self, example: Example, explanation: str, judge: Judge, usage: Usage) -> Simulated:
        text, shown, slots = simulation_text(explanation, example.str_tokens)
        asked = await score_text(
            judge,
            text,
            lambda tokens: read_slots(tokens, slots),
            usage=usage,
            top_logprobs=self.settings.top_logprobs,
            top_at=slots,
        )
        return Simulated(example, asked.value, shown, error=asked.error)

    async def _json(self, example: Example, explanation: str, judge: Judge, usage: Usage) -> Simulated:
        n = len(example.str_tokens)
        shown = json.dumps([clean_token(t) for t in example.str_tokens], ensure_ascii=False)
        messages = [
            {"role": "system", "content": load_prompt("simulation/system.md")},
            {
                "role": "user",
                "content": render(load_prompt("simulation/user.md"), explanation=explanation, n=n, tokens=shown),
            },
        ]

        def request(attempt: int) -> Request:
            temperature = 0.0 if attempt == 0 else 0.7
            return Request(messages, max_tokens=16 + 3 * n, temperature=temperature, schema=levels_schema(n))

        def parse(reply: Reply) -> tuple[list[float] | None, str]:
            if reply.truncated:  # the levels after the cut are missing, whatever the text parses as
                return None, CUT_OFF
            return parse_levels(reply.text, n)

        asked = await ask(judge, request, parse, attempts=self.settings.max_reasks + 1, usage=usage)
        return Simulated(example, asked.value, shown, answer=asked.answer, error=asked.error)

    def _score(self, record: LatentRecord, results: list[Simulated], top: float, usage: Usage) -> Score:
        all_true: list[float] = []
        all_pred: list[float] = []
        per_example: list[float | None] = []
        truth: list[bool] = []
        peaks: list[float] = []
        judgments = []
        for r in results:
            value = None
            if r.predicted is not None:
                t = true_levels(r.example, top)
                all_true += t
                all_pred += r.predicted
                value = correlation(t, r.predicted)
                per_example.append(value)
                truth.append(r.example.activating)
                peaks.append(max(r.predicted, default=0.0))
            peak = max(r.predicted, default=0.0) if r.predicted is not None else None
            judgments.append(
                Judgment(
                    window=r.example.window,
                    activating=r.example.activating,
                    prediction=None if peak is None else peak >= MAX_LEVEL / 2,
                    probability=None,
                    max_activation=r.example.max_activation,
                    quantile=r.example.quantile,
                    answer=r.answer[:200],
                    error=r.error,
                    text=r.shown,
                    value=None if value is None else round(value, 6),
                    detail="" if r.predicted is None else "predicted " + " ".join(f"{v:.1f}" for v in r.predicted),
                )
            )
        metrics = {
            "correlation": correlation(all_true, all_pred),
            "example_correlation": mean_or_none([v for v in per_example if v is not None]),
            "auroc": auroc(truth, peaks) if peaks else None,
        }
        n_failed = sum(r.predicted is None for r in results)
        return Score(
            latent=record.latent,
            scorer=self.name,
            metrics=metrics,
            n_examples=len(results),
            n_failed=n_failed,
            judgments=judgments,
            usage=usage,
        )
