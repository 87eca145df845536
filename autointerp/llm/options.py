"""Reading a two-option answer (Yes/No, A/B) from the top logprobs of a judge's first generated token.

Scorers and the explainer's phrase check ask the same kind of question, so they read the answer the
same way: the probability of one option against the other, from the alternatives the judge reports,
whatever their spelling (" Yes", "yes", "YES").
"""

from __future__ import annotations

import math
import re

from autointerp.llm.base import Reply, TokenLogprob


def answer_word(token: str) -> str:
    """A token as the option word it spells: lower case, letters only."""
    return re.sub(r"[^a-z]", "", token.lower())


def option_probability(reply: Reply, first: str, second: str) -> float | None:
    """P(first) / (P(first) + P(second)) at the first generated token, summed over the top-logprob
    tokens that spell either option (" Yes", "yes", "YES"...), or None if neither is among them."""
    if not reply.logprobs:
        return None
    return token_option_probability(reply.logprobs[0], first, second)


def token_option_probability(head: TokenLogprob, first: str, second: str) -> float | None:
    """`option_probability` at one generated token."""
    top = dict(head.top)
    top.setdefault(head.token, head.logprob)
    p_first = sum(math.exp(lp) for tok, lp in top.items() if answer_word(tok) == first)
    p_second = sum(math.exp(lp) for tok, lp in top.items() if answer_word(tok) == second)
    if p_first + p_second == 0:
        return None
    return p_first / (p_first + p_second)


def yes_probability(reply: Reply) -> float | None:
    return option_probability(reply, "yes", "no")
