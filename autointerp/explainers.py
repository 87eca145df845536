"""Explainer: a latent's training examples in, a short label out.

The answer must end with an `[EXPLANATION]:` line; free text first lets a capable model reason
before it labels. An answer without that line is re-asked with the output constrained to a JSON
object `{"explanation": ...}` (backends that constrain decoding cannot miss the format; small
local models need this), a bounded number of times, and then reported as a failure: it is never
replaced by a guess. An answer the token limit cut off is not read either (its last line may be
half a label: "[EXPLANATION]: Legal te"), nor is a JSON label as long as the schema's `maxLength`,
where a constrained decoder closes the string mid-phrase: both are re-asked like a missing label.

Three styles (a run's default follows its explainer: `names` for the embedded llama.cpp models,
`excerpts` for served ones, see `llm/providers.py`). `names` shows no excerpt at all: only the
tokens marked most often in the training examples, with how many examples each is marked in, and
asks for a short noun phrase naming their kind (JSON-constrained, after three few-shot turns about
other tokens); the label is that phrase followed by the tokens it was made from ("verbs of
expecting, such as "expected", "expect""), or the tokens alone where the judge, asked about each
token, does not call them instances of the phrase (label_check.py). Small explainers shown whole
excerpts describe the excerpts' topic or grammar ("The marked tokens are all nouns...") instead of the tokens that fire,
and the judge then cannot tell the latent's examples from anyone else's; named tokens give a small
judge something to look for, and the phrase carries it to tokens the list missed. `excerpts` (called
`default` before `names` was) shows activating excerpts with their marked tokens and lets a capable
model reason first; `contrastive` also shows the record's explainer-side silent examples
(`train_negatives`, which `--negatives similar` makes hard) and asks what sets the two apart. The
contrastive style takes no few-shot example (the shipped one has no silent excerpts).

`--explainer tokens` asks no LLM at all: the label names the tokens marked most often in the
training examples (`tokens_label`). It costs nothing, so it is the bar an LLM's label must clear,
and a first pass over a dictionary too large to send to an LLM.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from autointerp.label_check import check_phrase
from autointerp.llm.asking import Request, ask
from autointerp.llm.base import CUT_OFF, Judge, Message, Reply
from autointerp.prompting import (
    clean_token,
    format_marked,
    format_plain,
    load_prompt,
    marks_above,
    quoted,
    readable_token,
    render,
)
from autointerp.records import Example, Explanation, LatentRecord, Usage
from autointerp.settings import EXPLAINER_STYLES, TOKENS_EXPLAINER, ExplainerSettings

_ANSWER = re.compile(r"\[EXPLANATION\]\s*:\s*(.+)", re.IGNORECASE)


class ExplanationFailed(RuntimeError):
    """The explainer gave no parseable label after every re-ask."""


def format_examples(examples: list[Example], settings: ExplainerSettings, scale: float) -> str:
    lines = []
    for i, ex in enumerate(examples, 1):
        marks = marks_above(ex, settings.mark_fraction)
        lines.append(f"Excerpt {i}: {format_marked(ex.str_tokens, marks)}")
        if settings.show_activations:
            values = [
                f"{clean_token(t).strip() or repr(t)} ({round(10 * a / scale)})"
                for t, a, m in zip(ex.str_tokens, ex.activations, marks, strict=True)
                if m
            ]
            lines.append(f"Activations {i}: " + ", ".join(values))
    return "\n".join(lines)


def marked_token_counts(examples: list[Example], settings: ExplainerSettings, top: int = 12) -> str:
    """The marked tokens, most frequent first ("also" x25, "Also" x3): small explainers label a
    latent's topic when its excerpts share one, and this points them at the tokens that fire."""
    counts: dict[str, int] = {}
    for ex in examples:
        for tok, m in zip(ex.str_tokens, marks_above(ex, settings.mark_fraction), strict=True):
            if m:
                word = clean_token(tok).strip() or repr(tok)
                counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return ", ".join(f'"{w}" x{n}' for w, n in ranked)


def build_messages(record: LatentRecord, settings: ExplainerSettings) -> list[Message]:
    scale = max((e.max_activation for e in record.train), default=1.0) or 1.0
    examples = format_examples(record.train, settings, scale)
    if settings.style == "contrastive":
        silent = "\n".join(f"Silent excerpt {i}: {format_plain(e)}" for i, e in enumerate(record.train_negatives, 1))
        system = render(load_prompt("explainer/contrastive_system.md"), max_words=settings.max_words)
        user = render(load_prompt("explainer/contrastive_user.md"), active=examples, silent=silent)
    else:
        system = render(load_prompt("explainer/system.md"), max_words=settings.max_words)
        user = render(load_prompt("explainer/user.md"), examples=examples)
    if settings.token_counts:
        user += "\n\n" + render(
            load_prompt("explainer/token_counts.md"), counts=marked_token_counts(record.train, settings)
        )
    messages: list[Message] = [{"role": "system", "content": system}]
    if settings.fewshot and settings.style != "contrastive":
        messages += [
            {"role": "user", "content": load_prompt("explainer/fewshot_user.md")},
            {"role": "assistant", "content": load_prompt("explainer/fewshot_assistant.md")},
        ]
    messages.append({"role": "user", "content": user})
    return messages


MAX_LABEL_WORDS = 40  # longer is a small model caught in a repetition loop, not a label


def parse_explanation(text: str) -> str | None:
    """The label on the last `[EXPLANATION]:` line, or None if there is none, it is empty, or it runs
    on past MAX_LABEL_WORDS (then the JSON-constrained re-ask, with a length cap, gets a real one)."""
    matches = _ANSWER.findall(text)
    if not matches:
        return None
    label = matches[-1].strip().strip("\"'`*").strip()
    if not label or len(label.split()) > MAX_LABEL_WORDS:
        return None
    return label


def explanation_schema(max_chars: int = 300, key: str = "explanation") -> dict:
    return {
        "type": "object",
        "properties": {key: {"type": "string", "minLength": 3, "maxLength": max_chars}},
        "required": [key],
    }


def _json_label(text: str, key: str = "explanation") -> str | None:
    """The raw `key` string of a JSON answer, or None."""
    try:
        data = json.loads(text, strict=False)  # constrained decoders may put raw newlines in strings
    except json.JSONDecodeError:
        return None
    label = data.get(key) if isinstance(data, dict) else None
    return label if isinstance(label, str) else None


def parse_json_explanation(text: str, key: str = "explanation") -> str | None:
    try:
        json.loads(text, strict=False)
    except json.JSONDecodeError:
        return parse_explanation(text)
    label = _json_label(text, key)
    if label is None or not label.strip():
        return None
    return " ".join(label.split())


def read_label(reply: Reply, *, json_mode: bool, max_chars: int, key: str = "explanation") -> tuple[str | None, str]:
    """The label in an explainer's answer, or None and why not. A JSON label as long as the schema's
    maxLength is refused: a constrained decoder closes the string there, mid-phrase."""
    if reply.truncated:
        return None, CUT_OFF
    if not json_mode:
        label = parse_explanation(reply.text)
        return label, "" if label else "no [EXPLANATION]: line with a label"
    raw = _json_label(reply.text, key)
    if raw is not None and len(raw) >= max_chars:
        return None, f"label cut off at the schema's maxLength of {max_chars} characters"
    label = parse_json_explanation(reply.text, key)
    return label, "" if label else f'no {{"{key}": ...}} label'


async def explain(
    record: LatentRecord, judge: Judge, settings: ExplainerSettings | None = None, *, temperature: float = 0.0
) -> Explanation:
    """One label; `temperature` > 0 draws a sample (best-of-n asks for several different ones)."""
    settings = settings or ExplainerSettings()
    if not record.train:
        raise ExplanationFailed(f"latent {record.latent} has no training examples to explain")
    # None: a run resolves the style from its explainer's provider before it gets here; a library caller
    # handing a judge straight in gets the style the embedded default needs
    style = settings.style or "names"
    if style not in EXPLAINER_STYLES:
        raise ValueError(f"unknown explainer style {style!r}; valid: {', '.join(EXPLAINER_STYLES)}")
    if style == "names":
        return await explain_by_names(record, judge, settings, temperature=temperature)
    if style == "contrastive" and not record.train_negatives:
        raise ExplanationFailed(
            f"latent {record.latent} has no silent examples for the contrastive explainer "
            "(it fires almost everywhere, or n_train_negatives is 0)"
        )
    messages = build_messages(record, settings)
    reask = messages + [{"role": "user", "content": load_prompt("explainer/reask.md")}]

    def request(attempt: int) -> Request:
        if attempt == 0:
            return Request(messages, max_tokens=settings.max_tokens, temperature=temperature)
        # the re-asks constrain the answer to a JSON object: a backend that constrains decoding cannot miss
        return Request(
            reask,
            max_tokens=settings.reask_max_tokens,
            temperature=0.0 if attempt == 1 else 0.7,
            schema=explanation_schema(settings.max_label_chars),
            parse=lambda reply: read_label(reply, json_mode=True, max_chars=settings.max_label_chars),
        )

    usage = Usage()
    asked = await ask(
        judge,
        request,
        lambda reply: read_label(reply, json_mode=False, max_chars=settings.max_label_chars),
        attempts=settings.max_reasks + 1,
        usage=usage,
        catch_judge_errors=False,  # a backend failure fails the latent, as an error, not as a bad answer
    )
    if asked.value is None:
        raise ExplanationFailed(
            f"no explanation could be read from {asked.failures} answers of {judge.model} (last: {asked.error}); "
            f"last answer: {asked.answer[:300]!r}"
        )
    return Explanation(
        latent=record.latent,
        text=asked.value,
        model=judge.model,
        usage=usage,
        failures=asked.failures,
        raw=asked.answer,
    )


# ---------------------------------------------------------------- labels with no LLM: the marked tokens


@dataclass
class MarkedToken:
    """A token as the explainer would see it marked, merged over case and surrounding spaces."""

    text: str  # its most common surface form, readable (newlines as ↵, spaces stripped)
    examples: int  # training examples in which some form of it is marked
    marks: int  # times it is marked, over all of them


def marked_tokens(examples: list[Example], mark_fraction: float) -> list[MarkedToken]:
    """Every marked token of `examples` (above `mark_fraction` of its example's maximum, as the
    explainer marks them), the ones marked in most examples first, then by marks, then by text.

    " also", "also" and "Also" are one token here: a label should not spend three of its few
    places on one word; it shows the form marked most often.
    """
    forms: dict[str, Counter[str]] = {}
    in_examples: Counter[str] = Counter()
    marks: Counter[str] = Counter()
    for ex in examples:
        seen: set[str] = set()
        for tok, marked in zip(ex.str_tokens, marks_above(ex, mark_fraction), strict=True):
            if marked:
                form = readable_token(tok)
                key = form.casefold()
                forms.setdefault(key, Counter())[form] += 1
                marks[key] += 1
                seen.add(key)
        in_examples.update(seen)
    ranked = sorted(in_examples, key=lambda k: (-in_examples[k], -marks[k], k))
    return [MarkedToken(_surface(forms[k]), in_examples[k], marks[k]) for k in ranked]


def _surface(forms: Counter[str]) -> str:
    """The most common form; on a tie the lower-case one, then the first in sort order."""
    return min(forms, key=lambda f: (-forms[f], f != f.lower(), f))


def tokens_label(record: LatentRecord, settings: ExplainerSettings | None = None) -> str:
    """The label that names the latent's recurring strongly-activating tokens, or `ExplanationFailed`.

    A token counts if it is marked in at least `tokens_min_examples` (2) training examples: a token
    marked in one example only is that example's, not the latent's (with examples spread over
    activation quantiles, a token the latent prefers is marked again and again). At most
    `tokens_max` (5) are named, most frequent first. A latent with no recurring token gets no label
    (never an empty one): the failure says which token came closest.
    """
    settings = settings or ExplainerSettings()
    n = len(record.train)
    if not n:
        raise ExplanationFailed(f"latent {record.latent} has no training examples to take tokens from")
    found = marked_tokens(record.train, settings.mark_fraction)
    kept = [t for t in found if t.examples >= settings.tokens_min_examples][: max(1, settings.tokens_max)]
    if not kept:
        top = (
            f"the most frequent, {quoted(found[0].text)}, is marked in {found[0].examples} of {n}"
            if found
            else "no token is marked in any of them"
        )
        raise ExplanationFailed(
            f"no strongly-activating token of latent {record.latent} recurs in its {n} training examples "
            f"(at least {settings.tokens_min_examples} needed): {top}"
        )
    template = "explainer/tokens.md" if len(kept) > 1 else "explainer/tokens_one.md"
    return render(load_prompt(template), tokens=", ".join(quoted(t.text) for t in kept))


def explain_by_tokens(record: LatentRecord, settings: ExplainerSettings | None = None) -> Explanation:
    """`tokens_label` as the run records an explanation: `raw` keeps the counts it was made from."""
    settings = settings or ExplainerSettings()
    text = tokens_label(record, settings)
    found = marked_tokens(record.train, settings.mark_fraction)[: 3 * settings.tokens_max]
    counts = "; ".join(f"{quoted(t.text)} in {t.examples} examples ({t.marks} marks)" for t in found)
    return Explanation(
        latent=record.latent, text=text, model=TOKENS_EXPLAINER, raw=f"{len(record.train)} training examples: {counts}"
    )


# ---------------------------------------------------------------- the names style: a phrase for the marked tokens


NAMES_MAX_WORDS = 6  # a kind of token is named in a few words; --max-words can only ask for fewer
# The answer's JSON key. Qwen2.5-1.5B named the kind specifically ("verbs of carrying") more often under
# "feature" than under "explanation", where it fell back on parts of speech ("verb forms").
NAMES_KEY = "feature"


def names_messages(found: list[MarkedToken], settings: ExplainerSettings) -> list[Message]:
    """The names-style chat: system prompt, the few-shot turns (tokens of made-up latents and their
    kind, as JSON answers), then this latent's marked tokens with their example counts."""
    system = render(load_prompt("explainer/names_system.md"), max_words=min(settings.max_words, NAMES_MAX_WORDS))
    messages: list[Message] = [{"role": "system", "content": system}]
    for shot in json.loads(load_prompt("explainer/names_fewshot.json")):
        messages += [
            {"role": "user", "content": shot["tokens"]},
            {"role": "assistant", "content": json.dumps({NAMES_KEY: shot["kind"]})},
        ]
    listed = ", ".join(f"{quoted(t.text)} ({t.examples})" for t in found[: settings.names_top])
    messages.append({"role": "user", "content": listed})
    return messages


async def explain_by_names(
    record: LatentRecord, judge: Judge, settings: ExplainerSettings, *, temperature: float = 0.0
) -> Explanation:
    """The names-style label: the judge's phrase for the marked tokens, then the recurring ones."""
    found = marked_tokens(record.train, settings.mark_fraction)
    if not found:
        raise ExplanationFailed(
            f"no token of latent {record.latent} is marked in its {len(record.train)} training examples"
        )
    messages = names_messages(found, settings)
    schema = explanation_schema(settings.names_max_chars, NAMES_KEY)

    def parse(reply: Reply) -> tuple[str | None, str]:
        return read_label(reply, json_mode=True, max_chars=settings.names_max_chars, key=NAMES_KEY)

    def request(attempt: int) -> Request:
        # a re-ask samples: the same prompt at temperature 0 would give the same unreadable answer
        return Request(
            messages,
            max_tokens=settings.names_max_tokens,
            temperature=temperature if attempt == 0 else 0.7,
            schema=schema,
            parse=parse,
        )

    usage = Usage()
    asked = await ask(judge, request, parse, attempts=settings.max_reasks + 1, usage=usage, catch_judge_errors=False)
    if asked.value is None:
        raise ExplanationFailed(
            f"no explanation could be read from {asked.failures} answers of {judge.model} (last: {asked.error}); "
            f"last answer: {asked.answer[:300]!r}"
        )
    recurring = [t.text for t in found if t.examples >= settings.tokens_min_examples][: settings.names_examples]
    phrase = asked.value.rstrip(" .")
    check = (
        await check_phrase(
            judge,
            phrase,
            recurring,
            min_p=settings.phrase_check_p,
            min_share=settings.phrase_check_share,
            usage=usage,
        )
        if settings.phrase_check
        else None
    )
    return Explanation(
        latent=record.latent,
        text=names_label(phrase if check is None or check.kept else None, recurring),
        model=judge.model,
        usage=usage,
        failures=asked.failures,
        raw=f"{asked.answer} for {messages[-1]['content']}",
        phrase_check=None if check is None else check.to_json(),
    )


def names_label(phrase: str | None, tokens: list[str]) -> str:
    """The names-style label: the phrase followed by the tokens; the tokens alone where the phrase was
    dropped (written as the tokens explainer writes them); the phrase alone where no token recurs."""
    listed = ", ".join(quoted(t) for t in tokens)
    if phrase is None:
        return render(
            load_prompt("explainer/tokens.md" if len(tokens) > 1 else "explainer/tokens_one.md"), tokens=listed
        )
    return render(load_prompt("explainer/names_label.md"), kind=phrase, tokens=listed) if tokens else phrase
