"""Scripted judges that read the tiny cache's token names (" t{i}"), and a stand-in for its tokenizer: a run on
the tiny cache explains and scores as if a model had read the tokens, with no model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from autointerp.config import RunConfig, save_config
from autointerp.llm.scripted import ScriptedJudge
from autointerp.results import RunFiles
from autointerp.sampling import SamplingSettings
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


def tiny_run_folder(folder: Path, tiny_cache: Any, sampling: SamplingSettings, monkeypatch: Any) -> Path:
    """A run folder holding a copy of the tiny cache (32 latents at layers.1) and its config, read with the
    `TokenNames` tokenizer."""
    monkeypatch.setattr("autointerp.stages.open_run.load_tokenizer", lambda config, meta=None: TokenNames())
    files = RunFiles(folder)
    files.prepare()
    shutil.copytree(tiny_cache.folder, files.cache)
    meta = tiny_cache.meta
    resolved = {"model": "tiny", "dictionary": meta.dictionary, "hookpoint": meta.hookpoint}
    save_config(files.config, RunConfig(model="tiny", sampling=sampling), resolved)
    return files.folder
