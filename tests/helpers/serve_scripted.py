"""A real `autointerp serve` process whose judges are scripted: the tests' servers, and the bench's.

    python tests/helpers/serve_scripted.py [--delay S] [--calls-log FILE] -- --runs DIR --port P [serve options]

Everything after `--` is parsed by `autointerp serve`'s own parser and runs the real service (uvicorn,
job table, auth) with two judges given by name instead of loaded: `scripted-judge` and
`scripted-explainer` from report_fixtures (the names the tests' runs are configured with), which answer
at once, or after `--delay` seconds (asleep on the event loop, as a remote judge would be). With
`--calls-log`, every judge request appends one line (which judge, its temperature, and the sha256 of the
request), so a test can count what the judges were asked across server restarts. With `--gate FILE`, every
judge request waits until FILE exists: a test holds a job mid-scoring for as long as it needs, with no
guess at how long that is.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, which holds helpers/

from autointerp.cli import build_parser  # noqa: E402
from autointerp.llm.scripted import ScriptedJudge  # noqa: E402
from autointerp.serve.command import settings_from_args  # noqa: E402
from autointerp.serve.http import serve  # noqa: E402
from helpers.report_fixtures import explainer, judge  # noqa: E402


class Slow:
    """A scripted judge that takes `delay` seconds per request and logs what it was asked."""

    def __init__(self, inner: ScriptedJudge, delay: float, log: Path | None, gate: Path | None = None):
        self.inner = inner
        self.delay = delay
        self.log = log
        self.gate = gate
        self.model = inner.model
        self.supports_logprobs = inner.supports_logprobs

    async def chat(self, messages: list[dict[str, str]], **kwargs: Any):
        while self.gate is not None and not self.gate.exists():
            await asyncio.sleep(0.05)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.log is not None:
            digest = hashlib.sha256(json.dumps([messages, kwargs], sort_keys=True).encode()).hexdigest()
            with open(self.log, "a") as f:
                entry = {"judge": self.model, "sha": digest, "temperature": kwargs.get("temperature", 0.0)}
                f.write(json.dumps(entry) + "\n")
        return await self.inner.chat(messages, **kwargs)

    async def aclose(self) -> None:
        return None


def main() -> None:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    own = argparse.ArgumentParser()
    own.add_argument("--delay", type=float, default=0.0)
    own.add_argument("--calls-log", type=Path)
    own.add_argument("--gate", type=Path)
    args = own.parse_args(argv[:cut])
    served = build_parser().parse_args(["serve", *argv[cut + 1 :]])
    backends = {
        name: (lambda f=fn, n=name: Slow(ScriptedJudge(f, model=n), args.delay, args.calls_log, args.gate))
        for name, fn in (("scripted-judge", judge), ("scripted-explainer", explainer))
    }
    serve(settings_from_args(served), backends=backends, log_level=served.log_level)


if __name__ == "__main__":
    main()
