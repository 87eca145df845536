"""Scripted judges that read the tiny cache's token names (" t{i}"), and a stand-in for its tokenizer: a run on
the tiny cache explains and scores as if a model had read the tokens, with no model."""

from __future__ import annotations

import re

from autointerp.llm.scripted import ScriptedJudge
from helpers.planted import _excerpt, yes_no


class TokenNames:
    """Stands in for the subject tokenizer of the tiny cache: token i reads " t{i}"."""

    all_special_ids: list[int] = []

    def decode(self, ids):
        return "".join(f" t{i}" for i in ids)


def namer(messages) -> str:
    marked = re.findall(r"<<(.*?)>>", messages[-1]["content"])
    return "[EXPLANATION]: the tokens " + ", ".join(sorted(set(" ".join(marked).split()))[:4])


def reader(messages):
    explanation, excerpt = _excerpt(messages)
    named = set(re.findall(r"\bt(\d+)\b", explanation))
    spans = re.findall(r"<<(.*?)>>", excerpt) or [excerpt]
    return yes_no(0.9 if all(set(re.findall(r"\bt(\d+)\b", s)) & named for s in spans) else 0.1)


def judges() -> dict:
    return {"reader": ScriptedJudge(reader, model="reader"), "namer": ScriptedJudge(namer, model="namer")}
