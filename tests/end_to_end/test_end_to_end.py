"""The whole pipeline on the embedded default, with the real SmolLM2 judge: the command the
README gives for a quick check, run as a user would run it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.slow
def test_quick_run_on_the_embedded_default(tmp_path):
    out = tmp_path / "x"
    responses = tmp_path / "responses.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "autointerp.cli",
        "run",
        "--out",
        str(out),
        "--judge",
        "smollm2",
        "--max-latents",
        "3",
        "--n-tokens",
        "20000",
        "--quiet",
        "--response-cache",
        str(responses),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert "3 latents" in proc.stdout and "results:" in proc.stdout, proc.stderr[-3000:]

    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 3
    # SmolLM2 labels poorly: a latent it gives no usable label (here a label repeating itself until the
    # schema's maxLength cut it, which was once accepted cut) fails with its reason, and the command
    # says so and exits 1
    failed = table[table["status"] != "ok"]
    expected_rc = 1 if len(failed) else 0
    assert proc.returncode == expected_rc, proc.stderr[-3000:]
    assert (failed["error"].str.len() > 0).all()
    if len(failed):
        assert f"{len(failed)} of 3 latents failed" in proc.stderr
    table = table[table["status"] == "ok"]
    assert len(table) >= 2
    assert table["explanation"].str.len().gt(0).all()
    assert (table["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct").all()
    assert (table["hookpoint"] == "layers.3").all()
    assert table["explainer_model"].str.contains("SmolLM2").all()
    for scorer in ("detection", "fuzzing"):
        for metric in ("balanced_accuracy", "auroc"):
            assert table[f"{scorer}_{metric}"].between(0, 1).all()
        assert (table[f"{scorer}_n"] > 0).all()
        assert (table[f"{scorer}_n_failed"] < table[f"{scorer}_n"]).all()

    # the shuffled-label control: each latent's examples scored again with another latent's label
    assert (table["detection_control_latent"] != table["latent"]).all()
    assert sorted(table["detection_control_latent"]) == sorted(table["latent"])
    assert table["detection_control_auroc"].between(0, 1).all()
    assert "(control " in proc.stdout

    judgments = pd.read_parquet(out / "judgments.parquet")
    own = judgments[~judgments["control"]]
    assert len(own) == int(table["detection_n"].sum() + table["fuzzing_n"].sum())
    assert judgments["control"].sum() == len(own)
    assert judgments["probability"].dropna().between(0, 1).all()

    config = json.loads((out / "config.json").read_text())
    assert config["config"]["judge"] == "smollm2" and config["config"]["n_tokens"] == 20000
    assert config["resolved"]["num_latents"] == 4608
    assert len(config["environment"]["prompts_sha256"]) == 16

    # no window shown to the explainer was used to score the same latent
    explained = {
        json.loads(line)["latent"]: set(json.loads(line)["train_windows"])
        for line in (out / "explanations.jsonl").read_text().splitlines()
    }
    for latent, group in judgments.groupby("latent"):
        assert not explained[latent] & set(group["window"])

    # running again finds everything done: nothing is asked, nothing duplicated
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == expected_rc, again.stderr[-3000:]
    assert len((out / "explanations.jsonl").read_text().splitlines()) == 3
    assert len((out / "scores.jsonl").read_text().splitlines()) == 2 * 2 * len(table)  # scorers x (own, control)
    assert len(pd.read_parquet(out / "results.parquet")) == 3

    # the same job in a new folder is answered entirely from the response cache, with the same scores
    # (a re-ask at temperature > 0 is a fresh sample, never cached: compare latents whose labels agree)
    assert cmd[4] == "--out"
    fresh = subprocess.run([*cmd[:5], str(tmp_path / "x2"), *cmd[6:]], capture_output=True, text=True, timeout=600)
    assert fresh.returncode in (0, 1), fresh.stderr[-3000:]
    again_table = pd.read_parquet(tmp_path / "x2" / "results.parquet").loc[table.index]
    same = again_table["explanation"] == table["explanation"]
    assert same.any()

    # every cache miss is a scoring call for a label that was such a fresh sample (none when all agree):
    # a score row (own label or control) whose text is the first run's asked nothing
    def rows(folder):
        return [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]

    first = {(r["latent"], r["scorer"], r.get("donor")): r["explanation"] for r in rows(out)}
    fresh_scores = rows(tmp_path / "x2")
    relabelled = [r for r in fresh_scores if first.get((r["latent"], r["scorer"], r.get("donor"))) != r["explanation"]]
    assert all(r["usage"]["calls"] == 0 for r in fresh_scores if r not in relabelled)
    misses = int(re.search(r"(\d+) misses", fresh.stdout).group(1))
    assert misses == sum(r["usage"]["calls"] for r in relabelled), fresh.stdout
    for col in ("detection_auroc", "fuzzing_auroc"):
        assert (again_table[col][same] == table[col][same]).all()
