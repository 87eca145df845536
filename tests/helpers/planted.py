"""A planted latent with a known meaning (it fires on month names), and a judge that can read.

The scripted "oracle" judge understands an explanation by the category words it contains, so a test
can check that scorers rank the right explanation above a wrong one without any language model.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from autointerp.llm.base import Message, PromptToken, Reply, TokenLogprob
from autointerp.records import Example, LatentId, LatentRecord, LatentStats

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
ANIMALS = ["cat", "dog", "horse", "sheep", "goat", "mouse"]
FILLER = ["the", "report", "said", "that", "in", "we", "met", "again", "after", "rain", "city", "council", "voted"]
CATEGORIES = {"month": MONTHS, "animal": ANIMALS}


def _window(words: list[str], fire_at: set[int], strength: float, window: int, quantile: int) -> Example:
    toks = [(" " if i else "") + w for i, w in enumerate(words)]
    acts = [strength if i in fire_at else 0.0 for i in range(len(words))]
    return Example(
        window=window,
        tokens=list(range(len(words))),
        str_tokens=toks,
        activations=acts,
        quantile=quantile if fire_at else -1,
    )


def planted_record(n_train: int = 20, n_test: int = 20, n_neg: int = 20, seed: int = 0, n_val: int = 0) -> LatentRecord:
    """A latent that fires on month names; its silent examples mention animals and fillers."""
    rng = np.random.default_rng(seed)
    window = 0

    def activating(q: int) -> Example:
        nonlocal window
        words = list(rng.choice(FILLER, size=12))
        pos = int(rng.integers(1, 12))
        words[pos] = str(rng.choice(MONTHS))
        window += 1
        return _window(words, {pos}, 1.0 + q, window, q % 10)

    def silent() -> Example:
        nonlocal window
        words = list(rng.choice(FILLER + ANIMALS, size=12))
        window += 1
        return _window(words, set(), 0.0, window, -1)

    return LatentRecord(
        latent=LatentId("layers.10", 7),
        stats=LatentStats(
            n_tokens=10_000, fire_tokens=n_train + n_test, fire_windows=n_train + n_test, max_activation=10.0
        ),
        train=[activating(i) for i in range(n_train)],
        test=[activating(i) for i in range(n_test)],
        negatives=[silent() for _ in range(n_neg)],
        train_negatives=[silent() for _ in range(5)],
        validation=[activating(i) for i in range(n_val)],
        validation_negatives=[silent() for _ in range(n_val)],
    )


def _category(explanation: str) -> list[str]:
    for key, words in CATEGORIES.items():
        if key in explanation.lower():
            return words
    return []


def _excerpt(messages: list[Message]) -> tuple[str, str]:
    user = messages[-1]["content"]
    explanation = re.search(r"Explanation of the feature: (.*)", user).group(1)
    excerpt = re.search(r"<excerpt>\n(.*)\n</excerpt>", user, re.DOTALL).group(1)
    return explanation, excerpt


def yes_no(p_yes: float) -> Reply:
    p_yes = min(max(p_yes, 1e-4), 1 - 1e-4)
    tok = "Yes" if p_yes >= 0.5 else "No"
    top = {" Yes": math.log(p_yes), " No": math.log(1 - p_yes), "Maybe": math.log(1e-6)}
    return Reply(text=tok, logprobs=[TokenLogprob(token=" " + tok, logprob=top[" " + tok], top=top)])


def oracle(messages: list[Message]) -> Reply:
    """Says Yes when the excerpt (or, with marks, every marked span) holds a word of the explanation's category."""
    explanation, excerpt = _excerpt(messages)
    words = _category(explanation)
    marked = re.findall(r"<<(.*?)>>", excerpt)
    if marked:
        hit = all(any(w in m for w in words) for m in marked)
    else:
        hit = any(re.search(rf"\b{w}\b", excerpt) for w in words)
    return yes_no(0.9 if hit else 0.1)


def slot_excerpts(messages: list[Message]) -> tuple[str, list[str]]:
    """The explanation and the numbered excerpts of a slots-mode prompt."""
    user = messages[-1]["content"]
    explanation = re.search(r"Explanation of the feature: (.*)", user).group(1)
    excerpts = re.findall(r"Excerpt \d+:\n<excerpt>\n(.*?)\n</excerpt>", user, re.DOTALL)
    return explanation, excerpts


def slot_probabilities(messages: list[Message]) -> list[float]:
    """The oracle's P(Yes) for each excerpt of a slots-mode prompt."""
    explanation, excerpts = slot_excerpts(messages)
    out = []
    for e in excerpts:
        one = [{"role": "user", "content": f"Explanation of the feature: {explanation}\n<excerpt>\n{e}\n</excerpt>"}]
        top = oracle(one).logprobs[0].top
        out.append(math.exp(top[" Yes"]))
    return out


def slot_reply(p_yes: list[float]) -> Reply:
    """A "1: Yes\n2: No..." answer generated token by token the way Qwen's tokenizer splits it ("1", ":",
    " Yes", "\n"), with the top logprobs at each answer word."""
    tokens: list[TokenLogprob] = []
    for k, p in enumerate(p_yes, 1):
        p = min(max(p, 1e-4), 1 - 1e-4)
        top = {" Yes": math.log(p), " No": math.log(1 - p), " Maybe": math.log(1e-6)}
        word = " Yes" if p >= 0.5 else " No"
        if k > 1:
            tokens.append(TokenLogprob("\n", -0.01, {"\n": -0.01}))
        tokens += [TokenLogprob(str(k), -0.01, {str(k): -0.01}), TokenLogprob(":", -0.01, {":": -0.01})]
        tokens.append(TokenLogprob(word, top[word], top))
    return Reply(text="".join(t.token for t in tokens), logprobs=tokens)


def slots_oracle(messages: list[Message]) -> Reply:
    """The oracle, asked about several numbered excerpts at once, answering one line per excerpt."""
    return slot_reply(slot_probabilities(messages))


PHRASE_QUESTION = re.compile(r'^Is the token "(.*)" one of the (.*)\?$')


def phrase_oracle(messages: list[Message]) -> Reply:
    """Answers the explainer's phrase check (is this token an instance of this kind?) by the category
    words the kind names: Yes for a token of that category, No otherwise."""
    token, kind = PHRASE_QUESTION.search(messages[-1]["content"]).groups()
    return yes_no(0.9 if token in _category(kind) else 0.1)


def oracle_explainer(messages: list[Message]) -> str | Reply:
    """Names the category of the marked tokens, if no silent excerpt (contrastive prompts) holds one too.
    Shown a names-style list of tokens with counts instead, it names their category as JSON; asked the
    phrase check, it answers it as `phrase_oracle`."""
    user = messages[-1]["content"]
    if PHRASE_QUESTION.search(user):
        return phrase_oracle(messages)
    listed = re.findall(r'"([^"]*)" \(\d+\)', user)
    if listed and "<<" not in user:
        for key, words in CATEGORIES.items():
            if all(any(w in t for w in words) for t in listed):
                return json.dumps({"feature": f"{key} names"})
        return json.dumps({"feature": "unclear"})
    active = re.search(r"<active_excerpts>\n(.*?)\n</active_excerpts>", user, re.DOTALL)
    silent = re.search(r"<silent_excerpts>\n(.*?)\n</silent_excerpts>", user, re.DOTALL)
    marked = re.findall(r"<<(.*?)>>", active.group(1) if active else user)
    for key, words in CATEGORIES.items():
        if marked and all(any(w in m for w in words) for m in marked):
            if silent and any(re.search(rf"\b{w}\b", silent.group(1)) for w in words):
                continue  # the silent excerpts have these words too: not what sets the feature apart
            return f"They are all {key}s.\n[EXPLANATION]: {key} names"
    return "I cannot tell.\n[EXPLANATION]: unclear"


# ---------------------------------------------------------------- an oracle that reads raw text (prompt logprobs)

_TOKEN = re.compile(r"\w+|[^\w\s]|\s")  # words, punctuation, and every whitespace character on its own


def _belongs(word: str, words: list[str]) -> bool:
    return word.strip() in words


def oracle_text_scorer(text: str, top_logprobs: int) -> list[PromptToken]:
    """Teacher-forces `text` the way an ideal judge would, for the two text formats scorers send:

    - a simulation text (`<start>` block of "token<TAB>0" lines after "Feature: ..."): at each
      slot, the distribution puts 0.9 on "9" for a word of the explanation's category, else 0.95 on "0";
    - a surprisal text ("Description: ...", then "Text:" and the example): a word of the described
      category costs 1 nat, a category word the description does not name 6, any other word 3.
    """
    tokens = [(m.group(), m.start()) for m in _TOKEN.finditer(text)]
    lps: list[float | None] = [None] + [-3.0] * (len(tokens) - 1)
    tops: list[dict[str, float]] = [{} for _ in tokens]
    if "<start>" in text:
        words = _category(re.findall(r"Feature: (.*)", text)[-1])
        block = text.rindex("<start>\n") + len("<start>\n")
        for line in re.finditer(r"(.*)\t(0)$", text[block:], re.MULTILINE):
            slot = block + line.start(2)
            i = next(i for i, (_, off) in enumerate(tokens) if off == slot)
            hit = _belongs(line.group(1), words)
            tops[i] = {"9": math.log(0.9), "0": math.log(0.1)} if hit else {"0": math.log(0.95), "1": math.log(0.05)}
    elif "Description:" in text:
        words = _category(re.search(r"Description: (.*)", text).group(1))
        start = text.index("Text:") + len("Text:")
        every = [w for ws in CATEGORIES.values() for w in ws]
        for i, (tok, off) in enumerate(tokens):
            if off >= start and i:
                lps[i] = -1.0 if _belongs(tok, words) else -6.0 if _belongs(tok, every) else -3.0
    return [
        PromptToken(token=tok, offset=off, logprob=lp, top=dict(list(top.items())[:top_logprobs]))
        for (tok, off), lp, top in zip(tokens, lps, tops, strict=True)
    ]


def simulation_oracle(messages: list[Message]) -> str:
    """Answers the simulation scorer's JSON prompt: 9 for each token of the explanation's category, else 0."""
    user = messages[-1]["content"]
    words = _category(re.search(r"Explanation of the feature: (.*)", user).group(1))
    tokens = json.loads(re.search(r"^\[.*\]$", user, re.MULTILINE).group(0))
    return json.dumps({"activations": [9 if _belongs(t, words) else 0 for t in tokens]})
