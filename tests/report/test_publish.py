"""`autointerp publish`: the dry-run folder is a loadable dataset with a truthful card, and a real upload
(to a fake Hub on 127.0.0.1) sends exactly that folder, honours --private and never shows the token."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.fake_hub import FakeHub
from helpers.planted import yes_no
from helpers.tiny_subjects import decode_ids

from autointerp.cli import build_parser, main
from autointerp.config import RunConfig, save_config
from autointerp.llm.scripted import ScriptedJudge
from autointerp.pipeline import LatentWorker, RunSummary, process_latents, run_controls, select_latents
from autointerp.results import RunFiles, materialize
from autointerp.sampling import Sampler, SamplingSettings
from autointerp.scorers import DetectionScorer, FuzzingScorer

TOKEN = "hf_fAkEtOkEn0123456789abcdefXYZ"
REPO = "alice/tiny-sae-labels"
JUDGE_SECRET = "sk-judge-secret-42"
LAYOUT = {"README.md", "data/results.parquet", "judgments/judgments.parquet"}


@pytest.fixture(scope="module")
def run_folder(tiny_cache, tmp_path_factory) -> Path:
    """A finished run on the tiny cache with scripted judges, written the way `autointerp run` writes it."""
    files = RunFiles(tmp_path_factory.mktemp("publish") / "run")
    files.prepare()
    sampling = SamplingSettings(n_train=8, n_test=6, n_negatives=6, n_train_negatives=2, min_examples=10)
    # a judge URL with credentials in it: the card must show the host, never the key
    config = RunConfig(
        sampling=sampling,
        max_latents=4,
        judge="openai:tiny-judge",
        judge_url=f"http://bob:{JUDGE_SECRET}@127.0.0.1:9/v1?api_key={JUDGE_SECRET}",
    )
    latents, _ = select_latents(tiny_cache, config)
    explainer = ScriptedJudge(lambda m: "[EXPLANATION]: tokens t1 to t9", model="scripted-explainer")
    judge = ScriptedJudge(lambda m: yes_no(0.8 if " t1" in m[-1]["content"] else 0.3), model="scripted-judge")
    worker = LatentWorker(
        files,
        config,
        Sampler(tiny_cache, decode_ids, config.sampling),
        explainer,
        judge,
        [DetectionScorer(), FuzzingScorer()],
        {"explain", "score"},
        RunSummary(),
    )
    asyncio.run(process_latents(latents, worker, progress=False))
    asyncio.run(run_controls(latents, worker, seed=0, progress=False))
    resolved = {
        "model": "tiny-llama",
        "dictionary": "/data/sae/tiny/layers.1",
        "hookpoint": "layers.1",
        "corpus": "random",
        "num_latents": tiny_cache.meta.num_latents,
        "n_tokens": 3072,
        "dictionary_format": "sparsify",
        "d_in": 16,
    }
    save_config(files.config, config, resolved)
    materialize(files, {k: resolved[k] for k in ("model", "dictionary", "hookpoint")}, config.scorers)
    (files.cache / "activations.bin").parent.mkdir(exist_ok=True)
    (files.cache / "activations.bin").write_bytes(b"not for the Hub")
    return files.folder


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Point huggingface_hub at a fake Hub; hide any real login on this machine from the test."""
    import huggingface_hub.constants as hf_constants

    hub = FakeHub(TOKEN)
    with hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
        # read once at import time by huggingface_hub, so they are patched on the module too
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
        monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "harnesses.json"))
        yield hub


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _front_matter(card: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert m, "the card starts with a YAML header"
    return yaml.safe_load(m.group(1))


def _publish(capfd, *argv: str) -> tuple[int, str, str]:
    rc = main(["publish", *argv])
    out = capfd.readouterr()
    return rc, out.out, out.err


def test_dry_run_folder_is_a_loadable_dataset_with_a_truthful_card(run_folder, tmp_path, capfd, monkeypatch):
    rc, out, err = _publish(
        capfd, str(run_folder), "--repo", REPO, "--dry-run", "--with-judgments", "--license", "cc-by-4.0"
    )
    assert rc == 0, err
    staged = run_folder / "hub"
    assert str(staged) in out and "nothing uploaded" in out
    files = _files(staged)
    assert set(files) == LAYOUT  # no cache, no logs, no config.json
    assert files["data/results.parquet"] == (run_folder / "results.parquet").read_bytes()
    assert files["judgments/judgments.parquet"] == (run_folder / "judgments.parquet").read_bytes()

    card = files["README.md"].decode()
    meta = _front_matter(card)
    assert meta["license"] == "cc-by-4.0" and "autointerp" in meta["tags"]
    assert meta["configs"] == [
        {"config_name": "results", "default": True, "data_files": [{"split": "train", "path": "data/results.parquet"}]},
        {"config_name": "judgments", "data_files": [{"split": "train", "path": "judgments/judgments.parquet"}]},
    ]
    from autointerp.prompting import prompts_hash

    for text in (
        "tiny-llama",
        "/data/sae/tiny/layers.1",
        "`layers.1`",
        "scripted-judge",
        "scripted-explainer",
        "openai:tiny-judge",
        prompts_hash(),
        "`sampling.n_test` | `6`",
        f'load_dataset("{REPO}"',
    ):
        assert text in card, text
    assert "127.0.0.1:9/v1" in card and JUDGE_SECRET not in card and "bob" not in card

    # the summary table holds the real mean and median of each scorer's headline metrics, and the mean of
    # their shuffled-label controls
    results = pd.read_parquet(run_folder / "results.parquet")
    ok = results[results["status"] == "ok"]
    assert len(ok) >= 2
    assert "| scorer | metric | mean | median | control mean | latents |" in card
    for scorer in ("detection", "fuzzing"):
        for metric in ("balanced_accuracy", "auroc"):
            values = ok[f"{scorer}_{metric}"].dropna()
            control = ok[f"{scorer}_control_{metric}"].dropna()
            row = (
                f"| `{scorer}` | {metric} | {values.mean():.3f} | {values.median():.3f} | {control.mean():.3f} "
                f"| {len(values)} |"
            )
            assert row in card, row
    # and a table of the accuracy per activation quantile, the control's below each scorer's
    quantiles = sorted(int(c.rsplit("_", 1)[1]) for c in ok if c.startswith("detection_quantile_accuracy_"))
    assert quantiles and "| scorer | " + " | ".join(f"q{q}" for q in quantiles) + " | silent |" in card
    for name, prefix in (("`detection`", "detection_"), ("`detection` control", "detection_control_")):
        cells = [ok[f"{prefix}quantile_accuracy_{q}"].mean() for q in quantiles] + [
            ok[f"{prefix}negative_accuracy"].mean()
        ]
        assert f"| {name} | " + " | ".join(f"{v:.3f}" for v in cells) + " |" in card

    # staging again gives the same bytes: the card is a function of the run folder
    assert (
        main(["publish", str(run_folder), "--repo", REPO, "--dry-run", "--with-judgments", "--license", "cc-by-4.0"])
        == 0
    )
    assert _files(staged) == files

    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    cache = str(tmp_path / "datasets-cache")
    plain = datasets.load_dataset(
        "parquet", data_files=str(staged / "data" / "results.parquet"), split="train", cache_dir=cache
    )
    assert plain.num_rows == len(results) and plain["latent"] == results["latent"].tolist()
    assert datasets.get_dataset_config_names(str(staged)) == ["results", "judgments"]
    by_card = datasets.load_dataset(str(staged), cache_dir=cache)  # the default config, from the card
    assert list(by_card) == ["train"] and by_card["train"].num_rows == len(results)
    assert "detection_balanced_accuracy" in by_card["train"].column_names
    judged = datasets.load_dataset(str(staged), "judgments", split="train", cache_dir=cache)
    assert judged.num_rows == len(pd.read_parquet(run_folder / "judgments.parquet")) > 0
    assert {"latent", "scorer", "prediction", "text"} <= set(judged.column_names)


@pytest.mark.parametrize("transport", ["regular", "lfs"])
def test_upload_sends_exactly_the_dry_run_folder(run_folder, tmp_path, hub_env, capfd, monkeypatch, transport):
    """`regular`: every file inline in the commit (the path taken with hf_xet installed, as here);
    `lfs`: hf_xet off and the Parquet files sent through the LFS batch API first, as the Hub asks for *.parquet."""
    if transport == "lfs":
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
        hub_env.lfs_suffixes = (".parquet",)
    dry = tmp_path / "dry"
    rc, _, err = _publish(
        capfd, str(run_folder), "--repo", REPO, "--with-judgments", "--dry-run", "--staging-dir", str(dry)
    )
    assert rc == 0, err
    assert not hub_env.requests  # a dry run talks to nobody

    rc, out, err = _publish(capfd, str(run_folder), "--repo", REPO, "--with-judgments", "--private", "--quiet")
    assert rc == 0, err
    assert TOKEN not in out + err
    assert not hub_env.unhandled
    repo = hub_env.repos[REPO]
    assert repo.repo_type == "dataset" and repo.private
    assert repo.files == _files(dry)  # exactly the dry-run folder, byte for byte
    assert repo.lfs_paths == ({"data/results.parquet", "judgments/judgments.parquet"} if transport == "lfs" else set())
    assert f"{hub_env.url}/datasets/{REPO}" in out and "private" in out
    # every call to the Hub API carried the token (LFS object PUTs go to storage URLs, without it)
    api_calls = [r for r in hub_env.requests if not r.path.startswith("/_lfs/") and r.path != "/api/agent-harnesses"]
    assert api_calls and all(r.authorization == f"Bearer {TOKEN}" for r in api_calls)
    assert all(TOKEN.encode() not in r.body for r in hub_env.requests)


def test_publishing_again_commits_to_the_existing_repo(run_folder, hub_env, capfd):
    assert _publish(capfd, str(run_folder), "--repo", REPO, "--quiet")[0] == 0
    assert not hub_env.repos[REPO].private  # no --private: the account's default, public here
    rc, out, err = _publish(capfd, str(run_folder), "--repo", REPO, "--quiet", "--with-judgments")
    assert rc == 0, err
    assert "existing" in out and len(hub_env.repos[REPO].commits) == 2
    assert set(hub_env.repos[REPO].files) == LAYOUT


def test_private_is_never_silently_ignored(run_folder, hub_env, capfd):
    hub_env.add_repo(REPO, private=False)
    rc, _, err = _publish(capfd, str(run_folder), "--repo", REPO, "--private", "--quiet")
    assert rc == 2 and "already exists and is public" in err
    assert not hub_env.repos[REPO].files and not hub_env.repos[REPO].commits


def test_missing_token_says_how_to_log_in(run_folder, hub_env, capfd, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    rc, out, err = _publish(capfd, str(run_folder), "--repo", REPO)
    assert rc == 2 and "no Hugging Face token" in err and "HF_TOKEN" in err and "hf auth login" in err
    assert not [r for r in hub_env.requests if r.path != "/api/agent-harnesses"]


def test_a_refused_token_is_reported_and_never_printed(run_folder, hub_env, capfd, monkeypatch):
    wrong = "hf_wrongTokenThatMustNotBePrinted99"
    monkeypatch.setenv("HF_TOKEN", wrong)
    rc, out, err = _publish(capfd, str(run_folder), "--repo", REPO, "--quiet")
    assert rc == 2 and "refused the token" in err and "hf auth login" in err
    assert wrong not in out + err and TOKEN not in out + err
    assert REPO not in hub_env.repos


def test_an_unreachable_hub_is_reported(run_folder, hub_env, capfd, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    rc, out, err = _publish(capfd, str(run_folder), "--repo", REPO, "--quiet")
    assert rc == 2 and "could not reach the Hub" in err and str(port) in err
    assert TOKEN not in out + err


def test_bad_input_gets_a_clear_error(run_folder, tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _publish(capfd, str(empty), "--repo", REPO, "--dry-run")
    assert rc == 2 and "not an autointerp run folder" in err
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text((run_folder / "config.json").read_text())
    rc, _, err = _publish(capfd, str(half), "--repo", REPO, "--dry-run")
    assert rc == 2 and "no results.parquet" in err and "autointerp run" in err
    for bad in ("no-owner", "a/b/c", "alice/--x", "alice/x.git", "alice/" + "x" * 100, "al ice/x"):
        rc, _, err = _publish(capfd, str(run_folder), "--repo", bad, "--dry-run")
        assert rc == 2 and "OWNER/NAME" in err, bad
    rc, _, err = _publish(capfd, str(run_folder), "--repo", REPO, "--dry-run", "--license", "MIT License")
    assert rc == 2 and "--license" in err
    # a staging folder holding someone else's files is refused, and the files stay
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    rc, _, err = _publish(capfd, str(run_folder), "--repo", REPO, "--dry-run", "--staging-dir", str(busy))
    assert rc == 2 and "notes.txt" in err and (busy / "notes.txt").read_text() == "mine"


def test_publish_help_teaches(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["publish", "--help"])
    out = capsys.readouterr().out
    for text in (
        "examples:",
        "--repo",
        "--dry-run",
        "--private",
        "--with-judgments",
        "HF_TOKEN",
        "hf auth login",
        "load_dataset",
    ):
        assert text in out, text
