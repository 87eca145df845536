"""Intervention: does the explanation predict what the latent *does* to the model's output?

Input-side scorers (detection, fuzzing) ask whether the explanation says when a latent fires; a
latent can be explained badly by its inputs yet have a clear effect on what the model writes
next, and this scorer is how such latents are found. For each latent:

1. held-out prompts: short prefixes of corpus windows the explainer never saw (not in the record's
   train side), drawn with a generator seeded by (seed, latent);
2. the steering strength is tuned so that the mean next-token KL(clean || steered) at the last
   prompt position hits a target (binary search on log10 strength; subjects/steering.py says how
   a latent is steered);
3. each prompt is continued for a few tokens twice, clean and steered, with the same sampling noise;
4. the judge scores the explanation against the two continuations:
   - `intervention`: surprisal difference, log p(explanation | steered text) - log p(explanation |
     clean text) under the judge reading one template (prompts/intervention/surprisal.md) as plain
     text, summed over the explanation's tokens (nats), averaged over prompts. Needs a judge that
     returns prompt logprobs;
   - `intervention_choice`: the judge is shown both continuations, shuffled, and picks which one was
     steered towards the explanation; metric accuracy.

The subject-model work (steps 1-3) runs in a worker thread, one latent at a time (steering hooks
are installed on the shared model), and is shared by the two scorers: scoring both costs it once.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from autointerp.cache.store import ActivationCache
from autointerp.errors import ConfigError
from autointerp.llm.asking import score_text
from autointerp.llm.base import Judge, Message, PromptToken, Reply
from autointerp.llm.options import option_probability
from autointerp.prompting import clean_token, load_prompt, render
from autointerp.records import Explanation, Judgment, LatentRecord, Score, Usage
from autointerp.scorers.base import Scorer, ScorerContext, ScorerSettings, UnfitJudge
from autointerp.scorers.classify import ask_binary
from autointerp.scorers.metrics import mean_or_none, win_rate
from autointerp.scorers.registry import register
from autointerp.settings import SCORING, setting

if TYPE_CHECKING:
    from autointerp.config import RunConfig


SteeringMethod = Literal["auto", "encode_decode", "direction"]
ChoiceMode = Literal["auto", "logprobs", "text"]


@dataclass
class InterventionSettings(ScorerSettings):
    """How the intervention scorers steer the subject model and ask the judge about it."""

    section = "intervention"

    kl_target: float = setting(
        0.5,
        "intervention: steering strength is tuned so the mean next-token KL(clean||steered) is this",
        cli=SCORING,
        above=0,
    )
    kl_tolerance: float = setting(0.1, "relative: 0.1 accepts a KL within 10% of the target", above=0)
    n_prompts: int = setting(
        8,
        "intervention: held-out prompts continued per latent",
        cli=SCORING,
        flag="--intervention-prompts",
        at_least=1,
    )
    prompt_tokens: int = setting(16, "prompt length (at most the cache's window length)", at_least=1)
    new_tokens: int = setting(8, "tokens generated per continuation", at_least=1)
    temperature: float = setting(1.0, "sampling temperature of the continuations; 0 = greedy", at_least=0)
    method: SteeringMethod = setting("auto", "how a latent is pushed (subjects/steering.py)")
    search_steps: int = setting(12, "binary-search steps at most", at_least=1)
    log10_min: float = setting(-2.0, "strength search range, log10 of multiples of the latent's max activation")
    log10_max: float = setting(3.0, "upper end of the strength search range")
    choice_mode: ChoiceMode = setting("auto", "intervention_choice: how the pick is read")
    max_reasks: int = setting(1, "extra attempts after an answer that cannot be read", at_least=0)
    top_logprobs: int = setting(20, "alternatives read at the answer's first token", at_least=1)
    seed: int = setting(0, "seed of the held-out prompts and the continuations' sampling noise")

    def check(self) -> None:
        super().check()
        if not self.log10_min < self.log10_max:
            raise ConfigError(f"the strength search range must be increasing, got {self.log10_min}..{self.log10_max}")


class Tokenizer(Protocol):
    all_special_ids: list[int]

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class SteeringSubject:
    """The loaded subject model, its tokenizer, and the dictionary with the hookpoint it reads."""

    model: Any  # a transformers causal LM
    tokenizer: Tokenizer
    encoder: Any  # subjects.dictionaries.Encoder
    hookpoint: Any  # subjects.hookpoints.Hookpoint


@dataclass
class Continuation:
    window: int  # the cache window the prompt was cut from
    prompt: str
    clean: str
    steered: str
    changed: bool  # the steered tokens differ from the clean ones
    max_activation: float  # the latent's largest activation on the prompt's tokens (as cached)


@dataclass
class Intervention:
    """What steering one latent did: the tuned strength, the KL reached, and the continuations."""

    latent: int
    strength: float
    kl: float
    kl_reached: bool
    forward_passes: int  # batched passes of the subject model (search + generation)
    seconds: float
    continuations: list[Continuation] = field(default_factory=list)

    @property
    def changed(self) -> float | None:
        return mean_or_none([float(c.changed) for c in self.continuations])


def held_out_windows(
    cache: ActivationCache,
    record: LatentRecord,
    n: int,
    prompt_tokens: int,
    special_ids: set[int],
    rng: np.random.Generator,
) -> list[int]:
    """Up to `n` random windows outside the record's train side whose prompt part holds no special token.

    The explainer saw the train side; prompts from it would let an explanation fit by memory of
    its examples. Special tokens (document separators) would make a prompt span two documents.
    """
    train = record.train_windows()
    n_windows = cache.meta.n_windows
    found: list[int] = []
    seen: set[int] = set()
    for _ in range(50 * n + 200):
        if len(found) == n or len(seen) + len(train) >= n_windows:
            break
        w = int(rng.integers(n_windows))
        if w in seen or w in train:
            continue
        seen.add(w)
        if not special_ids.intersection(cache.window_tokens(w)[:prompt_tokens].tolist()):
            found.append(w)
    return found


class InterventionRunner:
    """Steers latents of one subject model: prompts, strength tuning and continuations, per latent.

    `subject` may be a loader, called on first use: a run whose latents are all scored already
    never loads the model. Results are kept for the last few latents, so the second scorer of a
    latent reuses the first one's continuations.
    """

    def __init__(
        self,
        subject: SteeringSubject | Callable[[], SteeringSubject],
        cache: ActivationCache,
        settings: InterventionSettings | None = None,
        *,
        keep: int = 4,
    ):
        self._subject = subject
        self.cache = cache
        self.settings = settings or InterventionSettings()
        self._lock = threading.Lock()
        self._memo: OrderedDict[int, Intervention] = OrderedDict()
        self._keep = keep

    def subject(self) -> SteeringSubject:
        if not isinstance(self._subject, SteeringSubject):
            self._subject = self._subject()
        return self._subject

    async def run(self, record: LatentRecord) -> Intervention:
        return await asyncio.to_thread(self.run_sync, record)

    def run_sync(self, record: LatentRecord) -> Intervention:
        with self._lock:  # the steering hooks go on the one shared model: one latent at a time
            latent = record.latent.index
            if latent not in self._memo:
                self._memo[latent] = self._compute(record)
                while len(self._memo) > self._keep:
                    self._memo.popitem(last=False)
            return self._memo[latent]

    def _compute(self, record: LatentRecord) -> Intervention:
        import torch

        from autointerp.subjects.steering import Steerer, generate_pair, tune

        s = self.settings
        start = time.perf_counter()
        subject = self.subject()
        latent = record.latent.index
        seed = [s.seed, latent, zlib.crc32(b"intervention")]
        rng = np.random.default_rng(seed)
        prompt_len = max(1, min(s.prompt_tokens, self.cache.meta.window_len))
        special = set(getattr(subject.tokenizer, "all_special_ids", []) or [])
        windows = held_out_windows(self.cache, record, s.n_prompts, prompt_len, special, rng)
        if not windows:
            raise ValueError(f"latent {latent}: no held-out window is left to cut prompts from")
        device = next(subject.model.parameters()).device
        ids = torch.tensor(
            np.stack([self.cache.window_tokens(w)[:prompt_len] for w in windows]), dtype=torch.long, device=device
        )
        steerer = Steerer.for_latent(subject.model, subject.encoder, subject.hookpoint, latent, s.method)
        scale = record.stats.max_activation if record.stats.max_activation > 0 else 1.0
        tuning = tune(
            subject.model,
            ids,
            steerer,
            s.kl_target,
            scale=scale,
            log10_range=(s.log10_min, s.log10_max),
            max_steps=s.search_steps,
            rel_tol=s.kl_tolerance,
        )
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        clean, steered = generate_pair(
            subject.model, ids, steerer, tuning.strength, s.new_tokens, temperature=s.temperature, generator=generator
        )
        continuations = []
        for row, w in enumerate(windows):
            prompt_ids = ids[row].tolist()
            c, st = clean[row].tolist(), steered[row].tolist()
            continuations.append(
                Continuation(
                    window=w,
                    prompt=_decode(subject.tokenizer, prompt_ids, special),
                    clean=_decode(subject.tokenizer, c, special),
                    steered=_decode(subject.tokenizer, st, special),
                    changed=c != st,
                    max_activation=float(self.cache.window_activations(w, latent)[:prompt_len].max()),
                )
            )
        passes = 2 + tuning.evaluations + s.new_tokens + 1  # prefix + clean + search; prefill + steps
        return Intervention(
            latent=latent,
            strength=tuning.strength,
            kl=tuning.kl,
            kl_reached=tuning.reached,
            forward_passes=passes,
            seconds=time.perf_counter() - start,
            continuations=continuations,
        )


def shared_runner(config: RunConfig, context: ScorerContext, hookpoint: str | None = None) -> InterventionRunner:
    """The run's steering runner of a hookpoint (None: the run's only one), shared by both intervention
    scorers: the model loads once, on first use, and a latent's continuations are computed once."""
    cache = context.cache_for(hookpoint)
    if cache is None:
        raise ValueError("the intervention scorers need the run's activation cache")
    if context.steering_subject is None:
        raise ValueError("the intervention scorers need the subject model (a steering_subject loader)")
    load = context.steering_subject
    settings = replace(InterventionSettings.of(config), seed=config.sampling.seed)  # one --seed fixes every draw
    key = "intervention_runner" if hookpoint is None else f"intervention_runner:{hookpoint}"
    return context.shared(key, lambda: InterventionRunner(lambda: load(hookpoint), cache, settings))


class _InterventionBase(Scorer):
    """What both intervention scorers share: the steering runner, and no place in best-of-n (the prompts
    are cut from windows outside the explainer's examples, which a validation view does not carry)."""

    can_pick_best_of = False
    settings_classes = (InterventionSettings,)

    def __init__(
        self,
        runner: InterventionRunner,
        settings: InterventionSettings | None = None,
        *,
        by_hookpoint: Callable[[str], InterventionRunner] | None = None,
    ):
        self.runner = runner
        self.settings = settings or runner.settings
        self._by_hookpoint = by_hookpoint  # a run of several hookpoints steers each through its own dictionary

    @classmethod
    def from_config(cls, config: RunConfig, context: ScorerContext) -> Scorer:
        if context.caches is None:
            return cls(shared_runner(config, context))
        # the first hookpoint's runner stands for the settings; each latent is steered at its own hookpoint
        return cls(
            shared_runner(config, context, context.hookpoints[0]),
            by_hookpoint=lambda hp: shared_runner(config, context, hp),
        )

    def runner_for(self, record: LatentRecord) -> InterventionRunner:
        return self.runner if self._by_hookpoint is None else self._by_hookpoint(record.latent.hookpoint)


def _decode(tokenizer: Tokenizer, ids: Sequence[int], special: set[int]) -> str:
    return tokenizer.decode([i for i in ids if i not in special])


def _display(c: Continuation) -> str:
    """How a prompt and its two continuations are written into judgments.parquet (one line each)."""
    return f"{clean_token(c.prompt)}\n[clean]{clean_token(c.clean)}\n[steered]{clean_token(c.steered)}"


NOT_ASKED = "not asked: identical continuations"


def _summary_metrics(iv: Intervention) -> dict[str, float | None]:
    return {"changed": iv.changed, "kl": round(iv.kl, 6), "strength": round(iv.strength, 6)}


# --- the surprisal difference ----------------------------------------------------------------------

_EXPLANATION = re.compile(r"\{\{\s*explanation\s*\}\}")


def surprisal_text(passage: str, explanation: str) -> tuple[str, int, int]:
    """The text the judge reads for one continuation, and the character span of the explanation in it."""
    parts = _EXPLANATION.split(load_prompt("intervention/surprisal.md"))
    if len(parts) != 2:
        raise ValueError("prompts/intervention/surprisal.md must hold {{ explanation }} exactly once")
    before, after = (render(p, text=passage) for p in parts)
    return before + explanation + after, len(before), len(before) + len(explanation)


def span_logprob(tokens: list[PromptToken], start: int, end: int) -> float | None:
    """Sum of the logprobs of the tokens overlapping [start, end), or None if there are none to sum.

    A token spans from its offset to the next token's; the last one, its own length.
    """
    total, found = 0.0, False
    for k, tok in enumerate(tokens):
        tok_end = tokens[k + 1].offset if k + 1 < len(tokens) else tok.offset + max(1, len(tok.token))
        if tok.offset < end and tok_end > start:
            if tok.logprob is None or not math.isfinite(tok.logprob):
                return None
            total += tok.logprob
            found = True
    return total if found else None


@register
class InterventionScorer(_InterventionBase):
    """Surprisal difference: how much more likely the explanation is after the steered text than the clean."""

    name = "intervention"
    metrics = ("surprisal_difference", "win_rate", "changed", "kl", "strength")
    summary = "surprisal difference of steered vs clean continuations; needs a judge with prompt logprobs"
    judge_capability = "prompt_logprobs"

    def unfit_message(self, judge: Judge) -> str:
        return (
            f"the intervention scorer needs a judge that returns prompt logprobs (the log-probability of "
            f"every token of a given text), and judge {judge.model} cannot: pick a judge whose backend "
            "returns them, or score with 'intervention_choice', which needs only chat answers"
        )

    async def __call__(self, record: LatentRecord, explanation: Explanation, judge: Judge) -> Score:
        self.check_judge(judge)
        iv = await self.runner_for(record).run(record)
        usage = Usage()
        judgments = await asyncio.gather(*(self._judge(c, explanation.text, judge, usage) for c in iv.continuations))
        values = [j.value for j in judgments if j.value is not None]
        metrics: dict[str, float | None] = {
            "surprisal_difference": mean_or_none(values),
            "win_rate": win_rate(values),
            **_summary_metrics(iv),
        }
        return Score(
            latent=record.latent,
            scorer=self.name,
            metrics=metrics,
            n_examples=len(judgments),
            n_failed=len(judgments) - len(values),
            judgments=list(judgments),
            usage=usage,
        )

    async def _logprob(self, passage: str, explanation: str, judge: Judge, usage: Usage) -> tuple[float | None, str]:
        text, start, end = surprisal_text(passage, explanation)

        def parse(tokens: list[PromptToken]) -> tuple[float | None, str]:
            value = span_logprob(tokens, start, end)
            return value, "" if value is not None else "no scored token covers the explanation"

        asked = await score_text(judge, text, parse, attempts=self.settings.max_reasks + 1, usage=usage)
        return asked.value, asked.error

    async def _judge(self, c: Continuation, explanation: str, judge: Judge, usage: Usage) -> Judgment:
        # `activating` is the truth "the steered text makes the explanation likelier", true by design;
        # `prediction` whether the judge found it so, `value` the difference in nats
        judgment = functools.partial(
            Judgment,
            window=c.window,
            activating=True,
            probability=None,
            max_activation=c.max_activation,
            quantile=-1,
            text=_display(c),
        )
        if not c.changed:  # the same text twice: the difference is exactly 0, no need to ask
            return judgment(prediction=None, value=0.0, detail=NOT_ASKED)
        clean, clean_err = await self._logprob(clean_token(c.prompt + c.clean), explanation, judge, usage)
        steered, steered_err = await self._logprob(clean_token(c.prompt + c.steered), explanation, judge, usage)
        if clean is None or steered is None:
            return judgment(prediction=None, value=None, error=clean_err or steered_err)
        diff = steered - clean
        return judgment(
            prediction=diff > 0,
            value=round(diff, 6),
            detail=f"log p(explanation): clean {clean:.4f}, steered {steered:.4f}",
        )


# --- the judge picks the steered continuation ------------------------------------------------------


def choice_probability(reply: Reply) -> float | None:
    """P(A) / (P(A) + P(B)) at the first generated token, or None if neither letter is in the top list."""
    return option_probability(reply, "a", "b")


def choice_answer(text: str) -> bool | None:
    """True for an answer that picks A, False for B, None if it picks neither (or both)."""
    m = re.match(r"\W*(?:continuation\s+)?([ab])\b", text.strip(), re.IGNORECASE)
    return None if m is None else m.group(1).lower() == "a"


@register
class InterventionChoiceScorer(_InterventionBase):
    """The judge sees both continuations, shuffled, and picks the one steered towards the explanation."""

    name = "intervention_choice"
    metrics = ("accuracy", "p_correct", "changed", "kl", "strength")
    summary = "the judge picks the steered continuation"

    def _mode(self, judge: Judge) -> str:
        mode = self.settings.choice_mode
        if mode == "auto":
            return "logprobs" if judge.supports_logprobs else "text"
        if mode == "logprobs" and not judge.supports_logprobs:
            raise UnfitJudge(f"judge {judge.model} gives no logprobs; use choice mode 'text'")
        if mode not in ("logprobs", "text"):
            raise ValueError(f"unknown choice mode {mode!r}; valid: auto, logprobs, text")
        return mode

    def check_judge(self, judge: Judge | None) -> None:
        super().check_judge(judge)
        assert judge is not None
        self._mode(judge)

    async def __call__(self, record: LatentRecord, explanation: Explanation, judge: Judge) -> Score:
        mode = self._mode(judge)
        iv = await self.runner_for(record).run(record)
        rng = np.random.default_rng([self.settings.seed, record.latent.index, zlib.crc32(self.name.encode())])
        steered_first = rng.random(len(iv.continuations)) < 0.5
        usage = Usage()
        judgments = await asyncio.gather(
            *(
                self._judge(c, bool(first), explanation.text, judge, mode, usage)
                for c, first in zip(iv.continuations, steered_first, strict=True)
            )
        )
        credit = [v for v in (j.value for j in judgments) if v is not None]
        # a pick that was not asked (identical continuations) has P(correct) 1/2, as it has credit 1/2
        p_correct: list[float] = []
        for j in judgments:
            if j.error:
                continue
            if j.prediction is None:
                p_correct.append(0.5)
            elif j.probability is not None:
                p_correct.append(j.probability if j.activating else 1 - j.probability)
        metrics: dict[str, float | None] = {
            "accuracy": mean_or_none(credit),
            "p_correct": mean_or_none(p_correct) if mode == "logprobs" else None,
            **_summary_metrics(iv),
        }
        return Score(
            latent=record.latent,
            scorer=self.name,
            metrics=metrics,
            n_examples=len(judgments),
            n_failed=sum(bool(j.error) for j in judgments),
            judgments=list(judgments),
            usage=usage,
        )

    def _messages(self, c: Continuation, steered_first: bool, explanation: str) -> list[Message]:
        a, b = (c.steered, c.clean) if steered_first else (c.clean, c.steered)
        user = render(
            load_prompt("intervention/choice_user.md"),
            explanation=explanation,
            prompt=clean_token(c.prompt),
            a=clean_token(a),
            b=clean_token(b),
        )
        return [
            {"role": "system", "content": load_prompt("intervention/choice_system.md")},
            {"role": "user", "content": user},
        ]

    async def _judge(
        self, c: Continuation, steered_first: bool, explanation: str, judge: Judge, mode: str, usage: Usage
    ) -> Judgment:
        # `activating` is the truth "A is the steered one", `prediction` "the judge picked A",
        # `probability` P(A); `value` is the pick's credit: 1 right, 0 wrong, 1/2 for a pick between two
        # identical texts, which is not asked (a coin toss: it counts as its expected value)
        judgment = functools.partial(
            Judgment,
            window=c.window,
            activating=steered_first,
            max_activation=c.max_activation,
            quantile=-1,
            text=_display(c),
        )
        if not c.changed:
            return judgment(prediction=None, probability=None, value=0.5, detail=NOT_ASKED)
        messages = self._messages(c, steered_first, explanation)
        picked_a, p_a, answer, error = await ask_binary(
            judge,
            messages,
            mode=mode,
            max_reasks=self.settings.max_reasks,
            top_logprobs=self.settings.top_logprobs,
            usage=usage,
            from_logprobs=choice_probability,
            from_text=choice_answer,
            options=("A", "B"),
        )
        if picked_a is None:
            return judgment(prediction=None, probability=None, value=None, answer=answer[:200], error=error)
        return judgment(
            prediction=picked_a,
            probability=None if p_a is None else round(p_a, 6),
            value=float(picked_a == steered_first),
            answer=answer[:200],
        )
