"""Scripted judges for runs on Ray: made inside each worker process by `scripted_judges` (by reference: this
module is on the workers' path), optionally slow, and leaving a file per worker process that asked them,
so a test can find a worker to kill and count the processes that did the work."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from autointerp.llm.scripted import ScriptedJudge
from helpers.report_fixtures import explainer, judge


class Marked(ScriptedJudge):
    """A scripted judge that sleeps `delay` per call (a remote judge's latency) and notes its process."""

    def __init__(self, responder: Any, model: str, delay: float, pids: str | None):
        super().__init__(responder, model=model)
        self.delay = delay
        self.mark = Path(pids) / str(os.getpid()) if pids else None

    async def chat(self, messages, **kwargs):
        if self.mark is not None and not self.mark.exists():
            self.mark.touch()
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().chat(messages, **kwargs)


def scripted_judges(delay: float = 0.0, pids: str | None = None) -> dict[str, Any]:
    """The run's two judges (pass it to a worker as functools.partial(scripted_judges, ...))."""
    return {
        "scripted-judge": Marked(judge, "scripted-judge", delay, pids),
        "scripted-explainer": Marked(explainer, "scripted-explainer", delay, pids),
    }


def counted_judges(log: str, delay: float = 0.0) -> dict[str, Any]:
    """`scripted_judges`, noting each time they are made: a line per call in the file `log` with the process
    and the GPUs Ray gave it (CUDA_VISIBLE_DEVICES), so a test can count how often a worker loads its judges."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\n")
    return scripted_judges(delay)
