"""Judge throughput through autointerp against the same llama.cpp server driven bare.

    python bench/server_throughput.py [--model smollm2] [--n 20]

Starts `python -m llama_cpp.server` on 127.0.0.1, then sends the detection prompts of planted
records twice: once straight through the `openai` client (one after another, no parsing: the
server alone), once through `OpenAIJudge` + `DetectionScorer` (retries, parsing, metrics). Prints
both rates in prompts/s and their ratio (target: within 10%). The two are measured in alternating
rounds and the median of each is compared, so a noisy machine slows both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.planted import planted_record  # noqa: E402

from autointerp.llm.assets import resolve_gguf  # noqa: E402
from autointerp.llm.openai_compat import OpenAIJudge  # noqa: E402
from autointerp.records import Explanation  # noqa: E402
from autointerp.scorers import DetectionScorer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--logits_all",
            "True",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=20, help="activating and silent examples per record")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    args = parser.parse_args()
    gguf, name = resolve_gguf(args.model)
    port = free_port()
    os.environ.setdefault("OPENAI_API_KEY", "unused")
    proc = start_server(gguf, port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        record = planted_record(n_test=args.n, n_neg=args.n)
        explanation = Explanation(record.latent, "names of calendar months", "bench")
        scorer = DetectionScorer()
        items = scorer.items(record, scorer._rng(record))
        prompts = [scorer._messages("user.md", explanation=explanation.text, text=i.text) for i in items]

        import openai

        client = openai.OpenAI(base_url=url, api_key="unused")
        client.chat.completions.create(model=name, messages=prompts[0], max_tokens=1)  # warm the prefix
        judge = OpenAIJudge(name, url, max_concurrency=1)
        bare_rates, our_rates = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for messages in prompts:
                client.chat.completions.create(
                    model=name, messages=messages, max_tokens=1, temperature=0, logprobs=True, top_logprobs=20
                )
            bare_rates.append(len(prompts) / (time.perf_counter() - start))
            start = time.perf_counter()
            score = asyncio.run(scorer(record, explanation, judge))
            our_rates.append(score.n_examples / (time.perf_counter() - start))
        bare, ours = statistics.median(bare_rates), statistics.median(our_rates)
    finally:
        proc.kill()
        proc.wait()
    print(
        f"{len(prompts)} one-token Yes/No prompts against llama_cpp.server ({name}), median of {args.rounds} "
        "alternating rounds:"
    )
    print(f"  server alone        {bare:6.2f} prompts/s")
    print(f"  through autointerp  {ours:6.2f} prompts/s ({score.n_failed} unreadable)")
    print(f"  ratio               {ours / bare:6.2f}")


if __name__ == "__main__":
    main()
