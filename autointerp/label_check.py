"""The names-style label's phrase, checked against the tokens it lists.

A 1.5B explainer often names the kind of a token list wrongly ("prepositions, such as "that",
"those", "ant""): the scorers on the same model do not see it, a reader sees it at once and stops
trusting the table. So each listed token is put to the judge on its own ("is the token "those" one
of the prepositions?"), after worked answers about other kinds, P(Yes) read from the top logprobs of
the answer's first token as the scorers read Yes/No. A token is an instance where P(Yes) reaches
`min_p`; a phrase fewer than `min_share` of whose tokens are instances is dropped, and the label is
then the tokens alone, in the form the tokens explainer writes (`the tokens "that", "those",
"ant"`). A token the judge answers neither Yes nor No about does not count either way; a phrase none
of whose tokens got an answer is kept (nothing was learned against it).

The same small judge that names a list wrongly tells a token of a kind from one that is not far
better (bench/label_phrases.py; README: Explainer styles) once the worked answers show it that No
is a common answer: asked cold, it says Yes to nearly everything.

One short call per token; the calls of one label are sent together, so a judge that batches what
arrives together decodes them as one batch.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from typing import Any

from autointerp.llm.base import Judge, Message
from autointerp.llm.options import yes_probability
from autointerp.prompting import load_prompt, quoted, render
from autointerp.records import Usage
from autointerp.settings import ExplainerSettings


@dataclass
class PhraseCheck:
    """What the check asked and found: kept into the explanation's record, so a reader can audit it."""

    phrase: str
    tokens: list[str]
    p_yes: list[float | None]  # per token, None where the judge's answer held neither Yes nor No
    min_p: float  # a token is an instance where its P(Yes) is at least this
    min_share: float  # the phrase is kept where at least this share of the answered tokens are instances
    kept: bool

    @property
    def share(self) -> float | None:
        return instance_share(self.p_yes, self.min_p)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "share": self.share}


def instance_share(p_yes: list[float | None], min_p: float) -> float | None:
    """The share of answered tokens the judge calls instances; None when none was answered."""
    answered = [p for p in p_yes if p is not None]
    if not answered:
        return None
    return sum(p >= min_p for p in answered) / len(answered)


def question(phrase: str, token: str) -> str:
    return render(load_prompt("explainer/phrase_check.md"), phrase=phrase, token=quoted(token))


def check_messages(phrase: str, token: str) -> list[Message]:
    """The check's chat: the system prompt, worked answers about other kinds (as many No as Yes: asked
    cold, a 1.5B judge says Yes to nearly every token), then the question about this token. Everything
    before the last turn is the same for every call, so a prefix cache holds it."""
    messages: list[Message] = [{"role": "system", "content": load_prompt("explainer/phrase_check_system.md")}]
    for shot in json.loads(load_prompt("explainer/phrase_check_fewshot.json")):
        messages += [
            {"role": "user", "content": question(shot["phrase"], shot["token"])},
            {"role": "assistant", "content": shot["answer"]},
        ]
    messages.append({"role": "user", "content": question(phrase, token)})
    return messages


async def check_phrase(
    judge: Judge,
    phrase: str,
    tokens: list[str],
    *,
    min_p: float,
    min_share: float,
    top_logprobs: int = 20,
    usage: Usage,
) -> PhraseCheck | None:
    """Ask `judge` whether each token is an instance of `phrase`; None when it cannot be asked (no
    logprobs, or no token to ask about). The judge's calls are added to `usage`."""
    if not tokens or not judge.supports_logprobs:
        return None
    replies = await asyncio.gather(
        *(
            judge.chat(
                check_messages(phrase, token),
                max_tokens=1,
                temperature=0.0,
                logprobs=top_logprobs,
            )
            for token in tokens
        )
    )
    p_yes: list[float | None] = []
    for reply in replies:
        usage.add(reply.usage)
        p = yes_probability(reply)
        p_yes.append(None if p is None else round(p, 4))
    share = instance_share(p_yes, min_p)
    return PhraseCheck(phrase, list(tokens), p_yes, min_p, min_share, kept=share is None or share >= min_share)


def skipped_note(settings: ExplainerSettings, explainer: Judge | None) -> str | None:
    """The run's one note that the phrase check is on but cannot be asked (the explainer gives no
    logprobs), so a reader knows the labels' phrases went unchecked; None when there is nothing to say."""
    if explainer is None or settings.style != "names" or not settings.phrase_check or explainer.supports_logprobs:
        return None
    return (
        f"the explainer {explainer.model} gives no logprobs: the names-style phrases are not checked against "
        "their tokens (the phrase check reads P(Yes) from logprobs)"
    )
