"""Intruder: can a judge tell the latent's own excerpts from one that is not, with no label at all?

Label-free, after "Evaluating SAE interpretability without explanations" and delphi's intruder
scorer: each question shows the judge `n_shown` held-out excerpts the latent is active on and one
intruder, a held-out excerpt it is silent on (the record's negatives: random windows by default,
top windows of other latents with `--negatives cooccurring`, look-alikes with `--negatives
similar`), in a seeded random order, and asks which one is the intruder. A latent whose excerpts
share something a reader can see gets found out; one that fires on a mixture does not. The
explanation is neither shown nor read: the score rates the latent, not its label.

By default the tokens a latent is strongly active on are marked `<<like this>>` in its excerpts (as
the explainer's examples mark them), and the intruder gets as many marks on random tokens, so the
judge compares what the marked tokens have in common rather than whole windows, in which the
latent's token is one of 32; the marks cannot give the intruder away, since every excerpt has them.
`marks=False` (`--intruder-plain`) shows plain excerpts.

Two ways to read the pick (`mode`): "logprobs": one generated token, and the judge's probability of
each number 1..n there, from the top logprobs and renormalised over those numbers, gives
P(correct), the probability of the intruder's number; the pick is the likeliest number. "text": the
first number of the answer. An answer that names no number from 1 to n, or that the token limit cut
off, is asked again up to `max_reasks` times; then the question is a recorded failure, left out of
the metrics, never counted as a wrong pick.

Metrics: `accuracy` (headline: the share of answered questions whose pick is the intruder) and
`p_correct` (the mean P(correct) over them; None when the judge gives no logprobs). Chance is 1/n for
both. Since the label plays no part, another latent's label would change nothing, so the control pass
(`control`) is a seeded random pick among the n excerpts of the same questions, asking no judge:
`intruder_control_accuracy` is what chance scores on those questions, `intruder_control_p_correct` is
exactly 1/n.

Judgments: one row per excerpt shown, each the answer to "is this one of the latent's excerpts?":
`activating` is true for the latent's excerpts and false for the intruder, `prediction` is false for
the excerpt the judge picked and true for the others, `probability` is one minus the judge's
probability of picking it, and `value` numbers the question (from 0) the row belongs to.
"""

from __future__ import annotations

import asyncio
import math
import re
import zlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from autointerp.llm.asking import Request, ask
from autointerp.llm.base import CUT_OFF, Judge, Message, Reply
from autointerp.prompting import format_marked, load_prompt, marks_above, render
from autointerp.records import Example, Explanation, Judgment, LatentRecord, Score, Usage
from autointerp.scorers.base import Scorer, ScorerContext, ScorerSettings, UnfitJudge
from autointerp.scorers.metrics import mean_or_none
from autointerp.scorers.registry import register
from autointerp.settings import SCORING, setting

if TYPE_CHECKING:
    from autointerp.config import RunConfig

IntruderMode = Literal["auto", "logprobs", "text"]
NUMBER = re.compile(r"\s*(?:excerpt\s*)?#?\s*(\d+)", re.IGNORECASE)


@dataclass
class IntruderSettings(ScorerSettings):
    """How the intruder scorer builds its questions and reads the judge's pick."""

    section = "intruder"

    n_shown: int = setting(
        4,
        "intruder: the latent's own excerpts shown beside the intruder in each question (chance is 1 in this + 1)",
        cli=SCORING,
        flag="--intruder-shown",
        at_least=1,
        at_most=8,  # the judge answers with one digit
    )
    n_questions: int = setting(
        10,
        "intruder: questions per latent; held-out excerpts are reused only when the record runs out of them",
        cli=SCORING,
        flag="--intruder-questions",
        at_least=1,
    )
    marks: bool = setting(
        True,
        "intruder: show plain excerpts, without marking the latent's active tokens (and as many random "
        "tokens of the intruder)",
        cli=SCORING,
        flag="--intruder-plain",
        negate=True,
    )
    mode: IntruderMode = setting(
        "auto",
        "intruder: auto: logprobs when the judge gives them, else text; logprobs: P(correct) from the "
        "probabilities of the numbers at the answer's token; text: the first number of the answer",
        cli=SCORING,
        flag="--intruder-mode",
    )
    max_reasks: int = setting(1, "extra attempts after an answer that names no excerpt", at_least=0)
    top_logprobs: int = setting(
        20, "alternatives read at the answer's token; the numbers must be among them", at_least=1
    )
    seed: int = setting(
        0, "seed of the questions and the control's random picks (the run sets it to the sampling seed)"
    )


@dataclass
class Question:
    """The excerpts of one question, in the order shown, which of them is the intruder, and each one
    as the judge reads it."""

    excerpts: list[Example]
    intruder: int  # index into `excerpts`
    texts: list[str]


@dataclass
class Pick:
    """What was read of the judge's answer to one question (`chosen` None: no usable answer)."""

    chosen: int | None
    probabilities: list[float] | None  # of each excerpt being the intruder, from logprobs
    answer: str = ""
    error: str = ""


def number_probabilities(reply: Reply, n: int) -> list[float] | None:
    """P(excerpt k is named) for k = 1..n at the first generated token, summed over the top-logprob tokens
    that spell each number and renormalised over the n numbers; None when none of them is there."""
    if not reply.logprobs:
        return None
    head = reply.logprobs[0]
    top = dict(head.top)
    top.setdefault(head.token, head.logprob)
    mass = [0.0] * n
    for token, logprob in top.items():
        text = token.strip()
        if text.isdigit() and 1 <= int(text) <= n:
            mass[int(text) - 1] += math.exp(logprob)
    total = sum(mass)
    return [m / total for m in mass] if total > 0 else None


def named_number(text: str, n: int) -> int | None:
    """The excerpt an answer names (1..n), read from its start ("3", "Excerpt 3", "#3."), or None."""
    m = NUMBER.match(text)
    if m is None or not 1 <= int(m.group(1)) <= n:
        return None
    return int(m.group(1))


@register
class IntruderScorer(Scorer):
    name = "intruder"
    metrics = ("accuracy", "p_correct")
    summary = "the judge finds the one excerpt among the latent's that is not its own; no label"
    can_pick_best_of = False  # it rates latents: every candidate label would score the same
    settings_classes = (IntruderSettings,)

    def __init__(self, settings: IntruderSettings | None = None, *, mark_fraction: float = 0.3):
        self.settings = settings or IntruderSettings()
        self.mark_fraction = mark_fraction

    @classmethod
    def from_config(cls, config: RunConfig, context: ScorerContext) -> Scorer:
        # one --seed fixes every draw: the questions follow the sampling seed; tokens are marked as the
        # explainer's examples mark them
        settings = replace(IntruderSettings.of(config), seed=config.sampling.seed)
        return cls(settings, mark_fraction=config.explain.mark_fraction)

    def mode_for(self, judge: Judge) -> str:
        mode = self.settings.mode
        if mode == "auto":
            return "logprobs" if judge.supports_logprobs else "text"
        if mode == "logprobs" and not judge.supports_logprobs:
            raise UnfitJudge(f"judge {judge.model} gives no logprobs; use --intruder-mode text")
        return mode

    def check_judge(self, judge: Judge | None) -> None:
        super().check_judge(judge)
        assert judge is not None
        self.mode_for(judge)

    def questions(self, record: LatentRecord) -> list[Question]:
        """The latent's questions, the same for the same record and seed: each held-out activating excerpt
        and each silent one is used once before any is used again."""
        shown, n = self.settings.n_shown, self.settings.n_questions
        if len(record.test) < shown or not record.negatives:
            return []
        rng = np.random.default_rng([self.settings.seed, record.latent.index, zlib.crc32(b"intruder")])
        own = _draws(len(record.test), shown * n + len(record.test), rng)
        others = _draws(len(record.negatives), n, rng)
        out = []
        for q in range(n):
            excerpts = [record.test[i] for i in _distinct(own, shown)]
            marks = [self._marks(e) for e in excerpts]
            n_marks = round(float(np.mean([sum(m) for m in marks])))
            intruder = record.negatives[others[q]]
            at = int(rng.integers(shown + 1))
            excerpts.insert(at, intruder)
            marks.insert(at, _random_marks(len(intruder.str_tokens), n_marks, rng))
            texts = [format_marked(e.str_tokens, m) for e, m in zip(excerpts, marks, strict=True)]
            out.append(Question(excerpts, at, texts))
        return out

    def _marks(self, example: Example) -> list[bool]:
        if not self.settings.marks:
            return [False] * len(example.str_tokens)
        return marks_above(example, self.mark_fraction)

    async def __call__(self, record: LatentRecord, explanation: Explanation, judge: Judge) -> Score:
        mode = self.mode_for(judge)
        questions = self.questions(record)
        usage = Usage()
        picks = await asyncio.gather(*(self._ask(q, judge, mode, usage) for q in questions))
        return self._score(record, questions, list(picks), usage)

    async def control(self, record: LatentRecord, explanation: Explanation, judge: object = None) -> Score:
        """Chance on the same questions: a seeded uniform pick among each question's excerpts, no judge asked."""
        questions = self.questions(record)
        rng = np.random.default_rng([self.settings.seed, record.latent.index, zlib.crc32(b"intruder control")])
        picks = []
        for q in questions:
            n = len(q.excerpts)
            picks.append(Pick(int(rng.integers(n)), [1 / n] * n, error="", answer="(random pick: the control)"))
        return self._score(record, questions, picks, Usage())

    def _messages(self, question: Question) -> list[Message]:
        excerpts = "\n\n".join(
            f"Excerpt {i}:\n<excerpt>\n{text}\n</excerpt>" for i, text in enumerate(question.texts, 1)
        )
        user = render(load_prompt("intruder/user.md"), excerpts=excerpts, n=len(question.excerpts))
        return [
            {"role": "system", "content": load_prompt("intruder/system.md")},
            {"role": "user", "content": user},
        ]

    async def _ask(self, question: Question, judge: Judge, mode: str, usage: Usage) -> Pick:
        messages = self._messages(question)
        n = len(question.excerpts)

        def request(attempt: int) -> Request:
            temperature = 0.0 if attempt == 0 else 0.7
            if mode == "logprobs":
                return Request(messages, max_tokens=1, temperature=temperature, logprobs=self.settings.top_logprobs)
            return Request(messages, max_tokens=4, temperature=temperature)

        def parse(reply: Reply) -> tuple[tuple[int, list[float] | None] | None, str]:
            if mode == "logprobs":
                probabilities = number_probabilities(reply, n)
                if probabilities is None:
                    return None, f"no number from 1 to {n} among the top logprobs"
                return (int(np.argmax(probabilities)), probabilities), ""
            number = named_number(reply.uncut_text(), n)
            if number is None:
                return None, CUT_OFF if reply.truncated else f"the answer names no excerpt from 1 to {n}"
            return (number - 1, None), ""

        asked = await ask(judge, request, parse, attempts=self.settings.max_reasks + 1, usage=usage)
        if asked.value is None:
            return Pick(None, None, asked.answer, asked.error)
        chosen, probabilities = asked.value
        return Pick(chosen, probabilities, asked.answer)

    def _score(self, record: LatentRecord, questions: list[Question], picks: list[Pick], usage: Usage) -> Score:
        answered = [(q, p) for q, p in zip(questions, picks, strict=True) if p.chosen is not None]
        with_probabilities = [(q, p) for q, p in answered if p.probabilities is not None]
        p_correct = (
            mean_or_none([p.probabilities[q.intruder] for q, p in with_probabilities if p.probabilities is not None])
            if with_probabilities and len(with_probabilities) == len(answered)
            else None
        )
        metrics: dict[str, float | None] = {
            "accuracy": mean_or_none([float(p.chosen == q.intruder) for q, p in answered]),
            "p_correct": p_correct,
        }
        judgments = [
            judgment
            for number, (q, p) in enumerate(zip(questions, picks, strict=True))
            for judgment in _judgments(number, q, p)
        ]
        return Score(
            latent=record.latent,
            scorer=self.name,
            metrics=metrics,
            n_examples=len(questions),
            n_failed=len(questions) - len(answered),
            judgments=judgments,
            usage=usage,
        )


def _random_marks(length: int, n: int, rng: np.random.Generator) -> list[bool]:
    """`n` marks on random tokens (never the first, as fuzzing's wrong marks): the intruder's disguise."""
    if n == 0 or length < 2:
        return [False] * length
    chosen = set(rng.choice(np.arange(1, length), size=min(n, length - 1), replace=False).tolist())
    return [i in chosen for i in range(length)]


def _distinct(queue: list[int], k: int) -> list[int]:
    """The first `k` different indices of `queue`, taken out of it: where two passes meet, an excerpt
    seen at the end of one is not shown twice in the same question."""
    picked: list[int] = []
    at = 0
    while len(picked) < k:
        if queue[at] in picked:
            at += 1
        else:
            picked.append(queue.pop(at))
    return picked


def _draws(size: int, count: int, rng: np.random.Generator) -> list[int]:
    """`count` indices into range(size): shuffled passes over all of them, so none repeats before all are used."""
    out: list[int] = []
    while len(out) < count:
        out += rng.permutation(size).tolist()
    return out[:count]


def _judgments(number: int, question: Question, pick: Pick) -> list[Judgment]:
    rows = []
    for k, (example, text) in enumerate(zip(question.excerpts, question.texts, strict=True)):
        picked = None if pick.chosen is None else pick.chosen == k
        p_picked = pick.probabilities[k] if pick.probabilities is not None else None
        rows.append(
            Judgment(
                window=example.window,
                activating=k != question.intruder,
                prediction=None if picked is None else not picked,
                probability=None if p_picked is None else round(1 - p_picked, 6),
                max_activation=example.max_activation,
                quantile=example.quantile,
                answer=pick.answer[:200],
                error=pick.error,
                text=text,
                value=float(number),
                detail=f"excerpt {k + 1} of {len(question.excerpts)}",
            )
        )
    return rows
