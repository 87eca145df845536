"""Kill a real run with SIGKILL mid-scoring against a flaky OpenAI-compatible server, run it again:
every latent ends scored or marked failed with a reason, nothing finished is lost or asked again,
no row is duplicated."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest
from helpers.fault_server import FaultServer

from autointerp.explainers import NAMES_KEY


def flaky_judge(seed: int):
    rng = random.Random(seed)

    def behaviour(request, n):
        roll = rng.random()
        if roll < 0.06:
            return ("status", 500)
        if roll < 0.10:
            return ("status", 429, {"Retry-After": "1"})
        if roll < 0.12:
            return ("truncate",)
        if roll < 0.14:
            return ("garbage",)  # a complete but unusable answer: a counted failure, never a 0 or 1
        system = request["messages"][0]["content"]
        if "[EXPLANATION]" in system:  # the excerpts explainer style
            return ("ok", "They share a pattern.\n[EXPLANATION]: common English words")
        if system.startswith("You name what a list of tokens has in common"):  # the names style (the default)
            return ("ok", json.dumps({NAMES_KEY: "common English words"}))
        return ("ok", "Yes" if rng.random() < 0.5 else "No", {"Yes": -0.5, "No": -0.9})

    return behaviour


def _cmd(out, url):
    return [
        sys.executable,
        "-m",
        "autointerp.cli",
        "run",
        "--out",
        str(out),
        "--judge",
        "openai:flaky",
        "--judge-url",
        url,
        "--max-latents",
        "4",
        "--n-tokens",
        "4096",
        "--n-test",
        "8",
        "--n-negatives",
        "8",
        "--min-examples",
        "10",
        "--no-cache",
        "--quiet",
    ]


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    with FaultServer(flaky_judge(0)) as server:
        proc = subprocess.Popen(_cmd(out, server.url), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        scores = out / "scores.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if scores.exists() and len(scores.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = {
            (r["latent"], r["scorer"], r.get("donor"))
            for r in map(json.loads, scores.read_text().splitlines())
            if r["status"] == "ok"
        }
        asked_before = len(server.requests)
        assert done_before

        server.set_behaviour(flaky_judge(1))
        again = subprocess.run(_cmd(out, server.url), env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "sk-test-not-a-real-key" not in again.stdout + again.stderr
        asked_after = server.requests[asked_before:]

    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 4 and table["latent"].is_unique
    for _, row in table.iterrows():
        assert row["status"] == "ok" or row["error"], row.to_dict()
    ok = table[table["status"] == "ok"]
    assert len(ok) >= 3
    for scorer in ("detection", "fuzzing"):
        assert (ok[f"{scorer}_n_failed"] <= ok[f"{scorer}_n"]).all()
        assert ok[f"{scorer}_balanced_accuracy"].dropna().between(0, 1).all()
    # each (latent, scorer) has exactly one finished row of its own label and one of its shuffled-label
    # control (donor set), and what was finished before the kill was not asked again
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    finished = Counter((r["latent"], r["scorer"], r.get("donor")) for r in rows if r["status"] == "ok")
    assert all(n == 1 for n in finished.values())
    assert sum(1 for _, _, donor in finished if donor is not None) == 2 * len(ok)
    explanations = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert Counter(r["latent"] for r in explanations if r["status"] == "ok").most_common(1)[0][1] == 1
    # 2 scorers x 4 latents x (own label + control) scores of 8 + 8 examples; re-asks and retries included
    max_new = (2 * 4 * 2 - len(done_before)) * (8 + 8) * 3 + 4 * 4
    assert len(asked_after) <= max_new
    judgments = pd.read_parquet(out / "judgments.parquet")
    own = judgments[~judgments["control"]]
    assert len(own) == int(ok["detection_n"].sum() + ok["fuzzing_n"].sum())
    assert judgments[judgments["prediction"].isna()]["error"].str.len().gt(0).all()
