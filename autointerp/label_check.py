"""The names-style label's phrase, checked against the tokens it lists.

A 1.5B explainer often names the kind of a token list wrongly ("prepositions, such as "that",
"those", "ant""): the scorers on the same model do not see it, a reader sees it at once and stops
trusting the table. So each listed token is put to the judge on its own ("is this token an instance
of this kind?"), P(Yes) read from the top logprobs of the answer's first token as the scorers read
Yes/No, and a phrase that no more than `min_share` of its tokens are instances of is dropped: the
label is then the tokens alone, in the form the tokens explainer writes (`the tokens "that",
"those", "ant"`). A token the judge answers neither Yes nor No about does not count either way; a
phrase none of whose tokens got an answer is kept (nothing was learned against it).

One short call per token; the calls of one label are sent together, so a judge that batches what
arrives together decodes them as one batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from autointerp.llm.base import Judge
from autointerp.llm.options import yes_probability
from autointerp.prompting import load_prompt, quoted, render
from autointerp.records import Usage
from autointerp.settings import ExplainerSettings

INSTANCE = 0.5  # P(Yes) at or above which the judge counts a token as an instance of the phrase


@dataclass
class PhraseCheck:
    """What the check asked and found: kept into the explanation's record, so a reader can audit it."""

    phrase: str
    tokens: list[str]
    p_yes: list[float | None]  # per token, None where the judge's answer held neither Yes nor No
    min_share: float
    kept: bool

    @property
    def share(self) -> float | None:
        return instance_share(self.p_yes)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "share": self.share}


def instance_share(p_yes: list[float | None]) -> float | None:
    """The share of answered tokens the judge calls instances; None when none was answered."""
    answered = [p for p in p_yes if p is not None]
    if not answered:
        return None
    return sum(p >= INSTANCE for p in answered) / len(answered)


def question(phrase: str, token: str) -> str:
    return render(load_prompt("explainer/phrase_check.md"), phrase=phrase, token=quoted(token))


async def check_phrase(
    judge: Judge, phrase: str, tokens: list[str], *, min_share: float, top_logprobs: int = 20, usage: Usage
) -> PhraseCheck | None:
    """Ask `judge` whether each token is an instance of `phrase`; None when it cannot be asked (no
    logprobs, or no token to ask about). The judge's calls are added to `usage`."""
    if not tokens or not judge.supports_logprobs:
        return None
    replies = await asyncio.gather(
        *(
            judge.chat(
                [{"role": "user", "content": question(phrase, token)}],
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
    share = instance_share(p_yes)
    return PhraseCheck(phrase, list(tokens), p_yes, min_share, kept=share is None or share > min_share)


def skipped_note(settings: ExplainerSettings, explainer: Judge | None) -> str | None:
    """The run's one note that the phrase check is on but cannot be asked (the explainer gives no
    logprobs), so a reader knows the labels' phrases went unchecked; None when there is nothing to say."""
    if explainer is None or settings.style != "names" or not settings.phrase_check or explainer.supports_logprobs:
        return None
    return (
        f"the explainer {explainer.model} gives no logprobs: the names-style phrases are not checked against "
        "their tokens (the phrase check reads P(Yes) from logprobs)"
    )
