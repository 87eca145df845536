"""A small but complete run folder for the report and notebook tests: tiny model and SAE, a word-level
tokenizer, and scripted explainer and judge that behave like a (mediocre) reader.

Token ids of the tiny cache decode to English words, and one id decodes to a `<script>` tag, so the
report's pages must show corpus text as text. The scripted explainer names the words it sees marked
most often; the judge says Yes when an excerpt holds one of them (and answers garbage now and then),
so scores differ between latents and between scorers the way real ones do.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import zlib
from collections import Counter
from pathlib import Path

from autointerp.config import RunConfig, save_config
from autointerp.llm.base import Message, Reply, TokenLogprob
from autointerp.llm.scripted import ScriptedJudge
from autointerp.results import RunFiles, materialize
from autointerp.sampling import SamplingSettings
from autointerp.stages.latent_stages import latent_stages
from helpers.tiny_subjects import build_tiny_cache

PAYLOAD = " <script>document.title='pwned'</script>"
WORDS = """the of and to in is was for on that with as by at from his her they which this be are had
river stone market winter garden letter window city horse bread music storm paper light north
council bridge harbour school train coffee mountain forest engine doctor story summer island camera
silver orange copper violin castle ladder pocket rocket candle mirror planet wheel basket anchor
jacket pencil tunnel valley meadow thunder marble lantern feather saddle compass velvet pepper
ribbon oyster falcon glacier desert canyon village prairie cottage temple
harvest signal orchard beacon voyage""".split()
VOCAB = ["<unk>", *[" " + w for w in WORDS], PAYLOAD]
assert len(VOCAB) == 96
SAMPLING = SamplingSettings(n_train=10, n_test=10, n_negatives=10, n_train_negatives=2, min_examples=12)


def write_word_tokenizer(folder: Path) -> Path:
    """A Hugging Face tokenizer folder whose id i is the word VOCAB[i] (loadable as a --model folder)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    return folder


def explainer(messages: list[Message]) -> str:
    """Names the two most-marked words: read from the excerpts' marks, or from a names-style list."""
    user = messages[-1]["content"]
    listed = re.findall(r'"([^"]*)" \((\d+)\)', user)
    if listed and "<<" not in user:
        return json.dumps({"feature": "the words: " + ", ".join(w for w, _ in listed[:2])})
    spans = re.findall(r"<<(.*?)>>", user)
    marked = Counter(w for span in spans for w in span.split())
    return "[EXPLANATION]: the words: " + ", ".join(w for w, _ in marked.most_common(2))


def _reply(p_yes: float) -> Reply:
    tok = " Yes" if p_yes >= 0.5 else " No"
    top = {" Yes": math.log(p_yes), " No": math.log(1 - p_yes)}
    return Reply(text=tok.strip(), logprobs=[TokenLogprob(token=tok, logprob=top[tok], top=top)])


def judge(messages: list[Message]) -> Reply:
    user = messages[-1]["content"]
    label = re.search(r"Explanation of the feature: (.*)", user).group(1)
    words = [w.strip() for w in label.partition(":")[2].split(",") if w.strip()]
    excerpt = re.search(r"<excerpt>\n(.*)\n</excerpt>", user, re.DOTALL).group(1)
    noise = zlib.crc32(excerpt.encode()) % 1000 / 1000
    if noise < 0.03:
        return Reply(text="Maybe", logprobs=[TokenLogprob(token="Maybe", logprob=-0.1, top={"Maybe": -0.1})])
    marked = re.findall(r"<<(.*?)>>", excerpt)
    spans = marked or [excerpt]
    hit = all(any(re.search(rf"\b{re.escape(w)}\b", s) for w in words) for s in spans)
    return _reply(min(0.97, max(0.03, (0.7 if hit else 0.3) + 0.5 * (noise - 0.5))))


def make_run(
    folder: Path,
    model,
    *,
    scorers: tuple[str, ...] = ("detection", "fuzzing"),
    max_latents: int = 6,
    latents: list[int] | None = None,
) -> Path:
    """Cache, explain and score a tiny run in `folder` through the app's own stages; returns the folder.

    `latents` picks them by index (latents 2 and 16 of the tiny cache fire too rarely: they are skipped).
    """
    tokenizer = write_word_tokenizer(folder / "subject")
    cache = build_tiny_cache(folder, model)
    config = RunConfig(
        model=str(tokenizer),
        sampling=SAMPLING,
        max_latents=max_latents,
        latents=latents,
        scorers=list(scorers),
        judge="scripted-judge",
        explainer="scripted-explainer",
    )
    files = RunFiles(folder)
    files.prepare()
    meta = cache.meta
    resolved = {
        "model": "tiny-llama",
        "dictionary": meta.dictionary,
        "hookpoint": meta.hookpoint,
        "corpus": meta.corpus,
        "num_latents": meta.num_latents,
        "n_tokens": meta.n_tokens,
    }
    save_config(files.config, config, resolved)
    judges = {
        "scripted-judge": ScriptedJudge(judge, model="scripted-judge"),
        "scripted-explainer": ScriptedJudge(explainer, model="scripted-explainer"),
    }
    asyncio.run(latent_stages(files, config, {"explain", "score"}, progress=False, judges=judges))
    materialize(files, {k: resolved[k] for k in ("model", "dictionary", "hookpoint")}, config.scorers)
    return folder
