"""The machinery detection and fuzzing share: ask a judge Yes/No about items, count what it got right.

Three ways to ask, picked by `mode`:
- "logprobs": one item per call, one generated token, P(Yes) from the top logprobs. This is what
  works with small judges and what gives AUROC.
- "text": one item per call, the answer's first word read as Yes or No (backends with no logprobs).
  The limit of a few tokens may cut a chatty answer ("Yes, because the..."): its first word still
  counts when it ended before the cut.
- "slots": `batch_size` items per call, a numbered list answered one line per item ("1: Yes",
  "2: No", ...); with logprobs, P(Yes) of each item is read at its answer word from the generated
  tokens' top logprobs, so it gives AUROC. Everything that does not change between one latent's calls
  (system prompt, explanation) comes first, so prefix caches hold it; the numbered lines keep each
  answer tied to its excerpt, which is where the JSON lists of 0/1 lost small judges.
- "json": `batch_size` items per call, answered as a JSON list of 0/1 (fewer calls, no AUROC).
An answer that cannot be read, or that the token limit cut off before what is read, is re-asked up
to `max_reasks` times and then recorded as a failure of that item: it is excluded from the metrics
and counted, never scored as a 0 or a 1.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from autointerp.llm.asking import Request, ask
from autointerp.llm.base import CUT_OFF, Judge, Message, Reply
from autointerp.llm.options import answer_word, token_option_probability, yes_probability
from autointerp.llm.providers import find_provider
from autointerp.prompting import load_prompt, render
from autointerp.records import Example, Explanation, Judgment, LatentRecord, Score, Usage
from autointerp.scorers.base import Scorer, ScorerContext, ScorerSettings, UnfitJudge
from autointerp.scorers.metrics import (
    CLASSIFICATION_METRICS,
    NEGATIVE_ACCURACY,
    classification_metrics,
    quantile_accuracies,
)
from autointerp.settings import SCORING, setting

if TYPE_CHECKING:
    from autointerp.config import RunConfig


ClassifierMode = Literal["auto", "logprobs", "text", "slots", "json"]
PromptLayout = Literal["question_first", "question_last"]


@dataclass
class ClassifierSettings(ScorerSettings):
    """How detection and fuzzing ask the judge Yes/No (one section for both: one --judge-mode sets both)."""

    section = "classifier"

    mode: ClassifierMode = setting(
        "auto",
        "auto: logprobs when the judge gives them, else text; logprobs: one example per call, P(Yes) from "
        "logprobs (gives AUROC); text: one per call, Yes/No read from the answer; slots: --batch-size "
        "numbered examples per call answered one line each ('1: Yes'), P(Yes) per line from logprobs "
        "(fewer calls and prompt tokens, gives AUROC); json: --batch-size examples per call answered as "
        "a JSON list",
        cli=SCORING,
        flag="--judge-mode",
    )
    batch_size: int = setting(5, "examples per prompt in slots and json modes", cli=SCORING, at_least=1)
    layout: PromptLayout = setting(
        "question_last",
        "one-example-per-call prompts (logprobs and text modes): question_last puts the question after the "
        "excerpt; question_first puts everything one latent's calls share (instructions, explanation, "
        "question) before the excerpt, so a prefix cache holds all but the excerpt and a short answer cue",
        cli=SCORING,
        flag="--prompt-layout",
    )
    prefix_tokens: int | None = setting(
        None,
        "one-example-per-call prompts: lengthen the prefix every call of the run shares (system prompt, "
        "then worked examples answered as chat turns) to at least this many tokens (estimated at 4 "
        "characters a token): worked examples make a small judge's answers sharper, and prefix caches "
        "that hold only long prompts (OpenAI: 1024 tokens) or whole blocks (vLLM) keep them; 0: none",
        cli=SCORING,
        none_means="1024 for the embedded llama.cpp judge, 0 for the others",
        at_least=0,
    )
    slots_grammar: bool = setting(
        False,
        "slots mode: constrain the reply to exactly the N lines 'k: Yes' / 'k: No' with a grammar, on judges "
        "that take one (the embedded llama.cpp judge; others are asked unconstrained); P(Yes) is "
        "still read from each slot's logprobs before the grammar masks them",
        cli=SCORING,
    )
    max_reasks: int = setting(1, "extra attempts after an answer that cannot be read", at_least=0)
    top_logprobs: int = setting(20, "alternatives read at the answer's first token", at_least=1)
    seed: int = setting(0, "seed of the order of a latent's items (the run sets it to the sampling seed)")


@dataclass
class Item:
    """One thing to show the judge: the excerpt as formatted, and whether the right answer is Yes."""

    text: str
    truth: bool
    example: Example


def text_answer(text: str) -> bool | None:
    words = text.strip().split()
    first = answer_word(words[0]) if words else ""
    return {"yes": True, "no": False}.get(first)


def extract_json(text: str) -> Any:
    """The JSON value an answer holds: the whole text, a ```json fence, or the first {...} / [...] span
    (small judges wrap their JSON in prose); None when nothing parses."""
    body = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", body, re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        m = re.search(r"\{.*\}|\[.*\]", body, re.DOTALL)
        if not m:
            return None
        try:
            return json.loads(m.group(0))
        except json.JSONDecodeError:
            return None


def parse_json_answers(text: str, n: int) -> list[bool] | None:
    """A list of n 0/1 answers from `{"answers": [...]}` (or a bare list), else None."""
    data = extract_json(text)
    if isinstance(data, dict):
        data = data.get("answers")
    if not isinstance(data, list) or len(data) != n:
        return None
    out = []
    for v in data:
        if v in (0, 1) or isinstance(v, bool):
            out.append(bool(v))
        else:
            return None
    return out


async def ask_binary(
    judge: Judge,
    messages: list[Message],
    *,
    mode: str,
    max_reasks: int,
    top_logprobs: int,
    usage: Usage,
    from_logprobs: Callable[[Reply], float | None],
    from_text: Callable[[str], bool | None],
    options: tuple[str, str] = ("Yes", "No"),
) -> tuple[bool | None, float | None, str, str]:
    """Ask a two-way question, re-asking an unreadable answer up to `max_reasks` times (at temperature 0.7).

    Returns (prediction, P(first option) or None, last answer, error). `prediction` is None when no
    answer could be read: the caller records that as a failure, never as either option.
    """
    first, second = options

    def request(attempt: int) -> Request:
        temperature = 0.0 if attempt == 0 else 0.7
        if mode == "logprobs":
            return Request(messages, max_tokens=1, temperature=temperature, logprobs=top_logprobs)
        return Request(messages, max_tokens=5, temperature=temperature)

    def parse(reply: Reply) -> tuple[tuple[bool, float | None] | None, str]:
        if mode == "logprobs":
            p = from_logprobs(reply)
            if p is None:
                return None, f"neither {first} nor {second} among the top logprobs"
            return (p > 0.5, p), ""
        # the first word decides; a word the token limit cut in two is not read as one
        pred = from_text(reply.uncut_text())
        if pred is None:
            return None, CUT_OFF if reply.truncated else f"answer is not {first} or {second}"
        return (pred, None), ""

    asked = await ask(judge, request, parse, attempts=max_reasks + 1, usage=usage)
    if asked.value is None:
        return None, None, asked.answer, asked.error
    prediction, probability = asked.value
    return prediction, probability, asked.answer, ""


_SLOT_LINE = re.compile(r"\s*(\d+)\s*:\s*([A-Za-z]+)[.!]?\s*")

SlotAnswer = tuple[bool | None, float | None, str, str]  # prediction, P(Yes), the item's line, error


def read_slots(reply: Reply, n: int) -> tuple[list[SlotAnswer] | None, str]:
    """The answers of a "1: Yes\n2: No\n..." reply to n numbered items, or None and why it cannot be read.

    The reply must be exactly the lines 1..n in order, each Yes or No (a blank line or a full stop
    is tolerated, nothing else). With logprobs, each item's P(Yes) is read at the generated token that
    holds its answer word; an item whose slot has neither Yes nor No among the top logprobs is a
    failure of that item alone.
    """
    if reply.truncated:
        return None, CUT_OFF
    found: list[tuple[bool, int, str]] = []  # (answer, character offset of the answer word, the line)
    for m in re.finditer(r"[^\n]+", reply.text):
        line = m.group(0)
        if not line.strip():
            continue
        slot = _SLOT_LINE.fullmatch(line)
        k = len(found) + 1
        if slot is None or int(slot.group(1)) != k or slot.group(2).lower() not in ("yes", "no"):
            return None, f"line {k} is not '{k}: Yes' or '{k}: No'"
        found.append((slot.group(2).lower() == "yes", m.start() + slot.start(2), line.strip()))
    if len(found) != n:
        return None, f"{len(found)} answer lines for {n} excerpts"
    if reply.logprobs is None:
        return [(answer, None, line, "") for answer, _, line in found], ""
    starts, pos = [], 0
    for t in reply.logprobs:
        starts.append(pos)
        pos += len(t.token)
    if "".join(t.token for t in reply.logprobs) != reply.text:
        return None, "the generated tokens do not spell the answer, so its slots cannot be found"
    out: list[SlotAnswer] = []
    for _, offset, line in found:
        token = reply.logprobs[bisect.bisect_right(starts, offset) - 1]
        p = token_option_probability(token, "yes", "no")
        if p is None:
            out.append((None, None, line, "neither Yes nor No among the top logprobs at this answer"))
        else:
            out.append((p > 0.5, p, line, ""))
    return out, ""


LAYOUT_TEMPLATES = {"question_last": "user.md", "question_first": "user_question_first.md"}
CHARS_PER_TOKEN = 4  # the estimate `prefix_tokens` is counted in: roughly English text in common tokenizers


@functools.cache
def worked_examples(prompt_dir: str) -> list[dict[str, str]]:
    """The answered examples of `prompts/<prompt_dir>/worked_examples.json` that lengthen a shared prefix."""
    shots = json.loads(load_prompt(f"{prompt_dir}/worked_examples.json"))
    for shot in shots:
        if set(shot) != {"explanation", "excerpt", "answer"} or shot["answer"] not in ("Yes", "No"):
            raise ValueError(
                f"{prompt_dir}/worked_examples.json: each entry has an explanation, excerpt and Yes/No answer"
            )
    return shots


def slots_grammar(n: int) -> str:
    """A GBNF grammar of exactly the n lines "1: Yes" ... "n: No" that `read_slots` reads.

    Under it a reply is never malformed (no preamble, no missing or extra line); the answer word at each
    slot is still the model's choice, and P(Yes) is read from its logprobs before the grammar masks any
    token, so the probabilities are the model's own.
    """
    lines = ' "\\n" '.join(f'"{k}: " answer' for k in range(1, n + 1))
    return f'root ::= {lines}\nanswer ::= "Yes" | "No"\n'


def answers_schema(n: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "answers": {"type": "array", "items": {"type": "integer", "enum": [0, 1]}, "minItems": n, "maxItems": n}
        },
        "required": ["answers"],
    }


class YesNoScorer(Scorer):
    """Base of detection and fuzzing: subclasses say how to build items and which prompts to use."""

    prompt_dir: ClassVar[str] = ""
    settings_classes: ClassVar[tuple[type[ScorerSettings], ...]] = (ClassifierSettings,)
    # then `quantile_accuracy_<q>` for each activation quantile of the held-out activating items
    metrics = (*CLASSIFICATION_METRICS, NEGATIVE_ACCURACY)

    def __init__(self, settings: ClassifierSettings | None = None):
        self.settings = settings or ClassifierSettings()

    @classmethod
    def from_config(cls, config: RunConfig, context: ScorerContext) -> Scorer:
        return cls(cls.settings_from(config))

    @staticmethod
    def settings_from(config: RunConfig) -> ClassifierSettings:
        # one --seed fixes every draw: the order of a latent's items follows the sampling seed
        settings = replace(ClassifierSettings.of(config), seed=config.sampling.seed)
        if settings.prefix_tokens is None:  # the judge's backend says how many worked examples suit it
            settings = replace(settings, prefix_tokens=find_provider(config.judge).prefix_tokens)
        return settings

    def items(self, record: LatentRecord, rng: np.random.Generator) -> list[Item]:
        raise NotImplementedError

    def _rng(self, record: LatentRecord) -> np.random.Generator:
        return np.random.default_rng([self.settings.seed, record.latent.index, zlib.crc32(self.name.encode())])

    def mode_for(self, judge: Judge) -> str:
        mode = self.settings.mode
        if mode == "auto":
            return "logprobs" if judge.supports_logprobs else "text"
        if mode == "logprobs" and not judge.supports_logprobs:
            raise UnfitJudge(f"judge {judge.model} gives no logprobs; use mode 'text', 'slots' or 'json'")
        return mode

    def check_judge(self, judge: Judge | None) -> None:
        super().check_judge(judge)
        assert judge is not None
        self.mode_for(judge)

    async def __call__(self, record: LatentRecord, explanation: Explanation, judge: Judge) -> Score:
        rng = self._rng(record)
        items = self.items(record, rng)
        items = [items[i] for i in rng.permutation(len(items))]
        mode = self.mode_for(judge)
        usage = Usage()
        if mode in ("json", "slots"):
            judgments = await self._ask_batches(items, explanation.text, judge, usage, mode)
        else:
            judgments = await asyncio.gather(
                *(self._ask_one(item, explanation.text, judge, mode, usage) for item in items)
            )
        answered = [j for j in judgments if j.prediction is not None]
        with_probs = mode == "logprobs" or (mode == "slots" and judge.supports_logprobs)
        probs = [j.probability for j in answered] if with_probs else None
        metrics = classification_metrics(
            [j.activating for j in answered], [bool(j.prediction) for j in answered], probs
        )
        # how the judge does on weak activations against strong ones (each item's quantile is its own
        # example's, so a misplaced-mark negative of fuzzing counts with the silent ones, as it should)
        metrics |= quantile_accuracies(
            [j.activating for j in judgments], [j.prediction for j in judgments], [j.quantile for j in judgments]
        )
        return Score(
            latent=record.latent,
            scorer=self.name,
            metrics=metrics,
            n_examples=len(items),
            n_failed=len(items) - len(answered),
            judgments=list(judgments),
            usage=usage,
        )

    def _messages(self, template: str, system: str = "system.md", **values: object) -> list[Message]:
        return [
            {"role": "system", "content": load_prompt(f"{self.prompt_dir}/{system}")},
            {"role": "user", "content": render(load_prompt(f"{self.prompt_dir}/{template}"), **values)},
        ]

    @staticmethod
    def _judgment(item: Item, prediction: bool | None, probability: float | None, answer: str, error: str) -> Judgment:
        return Judgment(
            window=item.example.window,
            activating=item.truth,
            prediction=prediction,
            probability=None if probability is None else round(probability, 6),
            max_activation=item.example.max_activation,
            quantile=item.example.quantile,
            answer=answer[:200],
            error=error,
            text=item.text,
        )

    def one_messages(self, explanation: str, text: str) -> list[Message]:
        """The chat of a one-example-per-call question, laid out as `settings.layout` says.

        With worked examples (`prefix_tokens`), they come as answered chat turns right after the system
        prompt, in the same layout as the real question: the part every call of the run shares.
        """
        template = load_prompt(f"{self.prompt_dir}/{LAYOUT_TEMPLATES[self.settings.layout]}")
        system = load_prompt(f"{self.prompt_dir}/system.md")
        messages: list[Message] = [{"role": "system", "content": system}]
        chars = len(system)
        for shot in worked_examples(self.prompt_dir):
            if chars >= CHARS_PER_TOKEN * (self.settings.prefix_tokens or 0):
                break
            user = render(template, explanation=shot["explanation"], text=shot["excerpt"])
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": shot["answer"]}]
            chars += len(user) + len(shot["answer"])
        messages.append({"role": "user", "content": render(template, explanation=explanation, text=text)})
        return messages

    async def _ask_one(self, item: Item, explanation: str, judge: Judge, mode: str, usage: Usage) -> Judgment:
        messages = self.one_messages(explanation, item.text)
        pred, p, answer, error = await ask_binary(
            judge,
            messages,
            mode=mode,
            max_reasks=self.settings.max_reasks,
            top_logprobs=self.settings.top_logprobs,
            usage=usage,
            from_logprobs=yes_probability,
            from_text=text_answer,
        )
        return self._judgment(item, pred, p, answer, error)

    async def _ask_batches(
        self, items: list[Item], explanation: str, judge: Judge, usage: Usage, mode: str
    ) -> list[Judgment]:
        size = max(1, self.settings.batch_size)
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        ask_batch = self._ask_slots if mode == "slots" else self._ask_batch
        results = await asyncio.gather(*(ask_batch(b, explanation, judge, usage) for b in batches))
        return [j for batch in results for j in batch]

    async def _ask_slots(self, batch: list[Item], explanation: str, judge: Judge, usage: Usage) -> list[Judgment]:
        excerpts = "\n\n".join(f"Excerpt {i}:\n<excerpt>\n{item.text}\n</excerpt>" for i, item in enumerate(batch, 1))
        n = len(batch)
        messages = self._messages(
            "slots_user.md", system="slots_system.md", explanation=explanation, excerpts=excerpts, n=n
        )
        top = self.settings.top_logprobs if judge.supports_logprobs else 0
        grammar = slots_grammar(n) if self.settings.slots_grammar else None

        def request(attempt: int) -> Request:
            temperature = 0.0 if attempt == 0 else 0.7
            # "10: Yes\n" is at most 5 tokens; room for a stray blank line or two
            return Request(messages, max_tokens=6 * n + 8, temperature=temperature, logprobs=top, grammar=grammar)

        asked = await ask(
            judge, request, lambda reply: read_slots(reply, n), attempts=self.settings.max_reasks + 1, usage=usage
        )
        if asked.value is None:
            return [self._judgment(item, None, None, asked.answer, asked.error) for item in batch]
        return [
            self._judgment(item, pred, p, line, error)
            for item, (pred, p, line, error) in zip(batch, asked.value, strict=True)
        ]

    async def _ask_batch(self, batch: list[Item], explanation: str, judge: Judge, usage: Usage) -> list[Judgment]:
        excerpts = "\n".join(f"Excerpt {i}: <excerpt>{item.text}</excerpt>" for i, item in enumerate(batch, 1))
        messages = self._messages("batch_user.md", explanation=explanation, excerpts=excerpts, n=len(batch))
        n = len(batch)

        def request(attempt: int) -> Request:
            temperature = 0.0 if attempt == 0 else 0.7
            return Request(messages, max_tokens=16 + 4 * n, temperature=temperature, schema=answers_schema(n))

        def parse(reply: Reply) -> tuple[list[bool] | None, str]:
            if reply.truncated:  # a list the limit cut short is not a list of these answers
                return None, CUT_OFF
            parsed = parse_json_answers(reply.text, n)
            return parsed, "" if parsed is not None else f"not a JSON list of {n} answers"

        asked = await ask(judge, request, parse, attempts=self.settings.max_reasks + 1, usage=usage)
        if asked.value is None:
            return [self._judgment(item, None, None, asked.answer, asked.error) for item in batch]
        return [self._judgment(item, p, None, asked.answer, "") for item, p in zip(batch, asked.value, strict=True)]
