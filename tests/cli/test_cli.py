"""The command line on bad input: every mistake gets a message that says what to do, exit code 2,
before minutes of work and without changing the run folder; a run that ends with failed latents
exits 1."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from helpers.tiny_subjects import write_sparsify_sae

from autointerp.cli import build_parser, main
from autointerp.config import ConfigError, RunConfig, load_config, merge, save_config
from autointerp.llm.scripted import ScriptedJudge
from autointerp.results import RunFiles
from autointerp.sampling import SamplingSettings

SAMPLING = SamplingSettings(n_train=8, n_test=12, n_negatives=12, n_train_negatives=2, min_examples=10)


def _run(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    for text in ("--max-latents", "--dictionary", "--hookpoint", "examples:", "resumes"):
        assert text in out


def test_wrong_hookpoint_lists_the_valid_ones(tmp_path, capsys):
    rc, err = _run(capsys, "cache", "--out", str(tmp_path / "r"), "--hookpoint", "layers.99", "--quiet")
    assert rc == 2 and "valid hookpoints" in err and "layers.29" in err


def test_dictionary_of_the_wrong_width_says_both_numbers(tmp_path, capsys):
    sae = write_sparsify_sae(tmp_path / "sae" / "layers.3", d_in=16)
    rc, err = _run(capsys, "cache", "--out", str(tmp_path / "r"), "--dictionary", str(sae.parent), "--quiet")
    assert rc == 2 and "d_in=16" in err and "576" in err


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path, capsys):
    rc, err = _run(capsys, "cache", "--out", str(tmp_path / "r"), "--dictionary", str(tmp_path / "nope"))
    assert rc == 2 and "not found" in err and "nope" in err
    sae = write_sparsify_sae(tmp_path / "sae" / "layers.3", d_in=576)
    (sae / "sae.safetensors").write_bytes(b"\x00garbage")
    rc, err = _run(capsys, "cache", "--out", str(tmp_path / "r2"), "--dictionary", str(sae.parent))
    assert rc == 2 and "sae.safetensors" in err and "corrupt" in err


def test_empty_corpus_is_reported(tmp_path, capsys):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n\n")
    rc, err = _run(capsys, "cache", "--out", str(tmp_path / "r"), "--corpus", str(corpus), "--quiet")
    assert rc == 2 and "nothing to cache" in err


def test_stages_in_the_wrong_order_say_what_to_run(tmp_path, capsys):
    rc, err = _run(capsys, "explain", "--out", str(tmp_path / "r"))
    assert rc == 2 and "autointerp cache" in err


def test_scoring_existing_explanations_needs_a_cached_run(tmp_path, capsys):
    source = tmp_path / "layers.10_feature.json"
    source.write_text('{"1": "commas"}')
    rc, err = _run(capsys, "score", "--out", str(tmp_path / "r"), "--explanations", str(source))
    assert rc == 2 and "autointerp cache" in err


def test_bad_option_values(capsys):
    for argv in (["run", "--out", "x", "--latents", "3,x"], ["run", "--out", "x", "--max-latents", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
    assert "--max-latents" in capsys.readouterr().err


def test_any_local_hf_model_folder_and_a_jsonl_corpus(tmp_path, capsys):
    """The bf16 folder the embedded model is converted into is a plain HF folder: use it as --model."""
    import json

    from autointerp.subjects.model import embedded_cache_path, load_subject

    load_subject(None)  # makes sure the folder exists
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"body": f"Document {i} talks about the weather in May."}) for i in range(120))
    )
    rc = main(
        [
            "cache",
            "--out",
            str(tmp_path / "r"),
            "--model",
            str(embedded_cache_path()),
            "--corpus",
            str(corpus),
            "--text-column",
            "body",
            "--n-tokens",
            "1024",
            "--quiet",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "1,024 tokens" in out.out
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["resolved"]["model"] == str(embedded_cache_path())


def test_new_scorers_and_prompt_logprobs_reach_the_config():
    from autointerp.cli import config_from_args
    from autointerp.llm.judges import make_judge

    args = build_parser().parse_args(
        [
            "score",
            "--out",
            "x",
            "--scorers",
            "simulation,surprisal",
            "--prompt-logprobs",
            "--judge",
            "openai:m",
            "--judge-url",
            "http://127.0.0.1:9/v1",
            "--no-cache",
        ]
    )
    config, explicit = config_from_args(args)
    assert config.scorers == ["simulation", "surprisal"] and config.prompt_logprobs
    assert {"scorers", "prompt_logprobs"} <= explicit
    judge = make_judge(config.judge, config)
    assert judge.supports_prompt_logprobs and judge.describe()["supports_prompt_logprobs"]


# ---------------------------------------------------------------- failing fast, and leaving the folder alone


def _no_model(config):
    pytest.fail("the subject model was loaded before the bad input was found")


def test_a_binary_corpus_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("autointerp.stages.cache_stage.load_subject", _no_model)
    corpus = tmp_path / "b.txt"
    corpus.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(1, 256)) * 100)
    rc, err = _run(capsys, "cache", "--out", str(tmp_path / "r"), "--corpus", str(corpus), "--quiet")
    assert rc == 2 and "b.txt is not text: a NUL byte at byte offset 5" in err


def test_latents_out_of_range_are_refused_before_caching_and_not_remembered(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        "autointerp.stages.cache_stage.load_subject", _no_model
    )  # the size comes from the checkpoint's header
    out = tmp_path / "r"
    rc, err = _run(capsys, "run", "--out", str(out), "--latents", "3,999999", "--n-tokens", "1024", "--quiet")
    assert rc == 2 and "--latents 999999 out of range: the dictionary has 4,608 latents (0..4607)" in err
    assert not (out / "config.json").exists() and not (out / "cache").exists()


class _TokenNames:
    """Stands in for the subject tokenizer of the tiny cache: token i reads " t{i}"."""

    all_special_ids: list[int] = []

    def decode(self, ids):
        return "".join(f" t{i}" for i in ids)


def _tiny_run(tmp_path: Path, tiny_cache, monkeypatch, **config) -> RunFiles:
    """A run folder holding a copy of the tiny cache (32 latents at layers.1) and its config."""
    monkeypatch.setattr("autointerp.stages.open_run.load_tokenizer", lambda config, meta=None: _TokenNames())
    files = RunFiles(tmp_path / "run")
    files.prepare()
    shutil.copytree(tiny_cache.folder, files.cache)
    meta = tiny_cache.meta
    resolved = {"model": "tiny", "dictionary": meta.dictionary, "hookpoint": meta.hookpoint}
    save_config(files.config, RunConfig(model="tiny", sampling=SAMPLING, **config), resolved)
    return files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_judge_fails_fast_and_the_folder_is_unchanged(tmp_path, tiny_cache, capsys, monkeypatch):
    files = _tiny_run(tmp_path, tiny_cache, monkeypatch)
    before = files.config.read_bytes()
    source = tmp_path / "layers.1_feature.json"
    source.write_text('{"3": "commas", "4": "dots"}')
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    t0 = time.monotonic()
    argv = ["score", "--out", str(files.folder), "--explanations", str(source), "--judge", "openai:dead"]
    rc, err = _run(capsys, *argv, "--judge-url", url, "--no-cache", "--quiet")
    assert rc == 2 and url in err and "cannot reach" in err
    assert time.monotonic() - t0 < 30
    assert files.config.read_bytes() == before  # neither the dead judge nor its URL were recorded
    assert not files.explanations.exists()  # and nothing was imported

    rc, err = _run(capsys, "explain", "--out", str(files.folder), "--latents", "5,99", "--quiet")
    assert rc == 2 and "--latents 99 out of range: the dictionary has 32 latents" in err
    assert files.config.read_bytes() == before


def test_only_what_defines_the_folder_carries_over_to_the_next_command(tmp_path, tiny_cache, capsys, monkeypatch):
    # a config.json as an earlier version left it after failed commands: their options stuck in it
    stuck = dict(latents=[999_999], judge="openai:dead", judge_url="http://127.0.0.1:1/v1", scorers=["simulation"])
    files = _tiny_run(tmp_path, tiny_cache, monkeypatch, **stuck)
    judge = ScriptedJudge(lambda m: "[EXPLANATION]: tokens t1 t2", model="oracle")
    monkeypatch.setattr("autointerp.stages.latent_stages.make_judge", lambda name, config, **_: judge)
    args = ["--judge", "oracle", "--max-latents", "2", "--no-phrase-check", "--quiet"]  # one call per latent
    rc, err = _run(capsys, "explain", "--out", str(files.folder), *args)
    assert rc == 0, err
    assert len(judge.calls) == 2
    config, _ = load_config(files.config)
    assert not config.explain.phrase_check  # an explainer setting, recorded as the run's others are
    assert (config.latents, config.max_latents, config.judge, config.judge_url) == (None, 2, "oracle", None)
    assert config.scorers == ["detection", "fuzzing"] and config.sampling == SAMPLING and config.model == "tiny"


def test_the_split_is_given_to_cache_and_the_later_stages_use_it(tmp_path, tiny_cache, capsys, monkeypatch):
    """`cache` takes the options that fix the folder's split (it is what pins them): explain and score then
    sample 15 held-out examples without being told again; a later command that says otherwise is refused."""
    from helpers.planted import yes_no

    def cache_stage(files, config, **kwargs):  # the tiny cache stands in for a forward pass over a corpus
        shutil.copytree(tiny_cache.folder, files.cache)
        meta = tiny_cache.meta
        resolved = {"model": "tiny", "dictionary": meta.dictionary, "hookpoint": meta.hookpoint}
        return {**resolved, "num_latents": meta.num_latents, "n_tokens": meta.n_tokens}

    monkeypatch.setattr("autointerp.stages.cache_stage.cache_stage", cache_stage)
    monkeypatch.setattr("autointerp.stages.open_run.load_tokenizer", lambda config, meta=None: _TokenNames())
    made = {
        "namer": ScriptedJudge(lambda m: "[EXPLANATION]: tokens t1 t2", model="namer"),
        "reader": ScriptedJudge(lambda m: yes_no(0.8), model="reader"),
    }
    monkeypatch.setattr("autointerp.stages.latent_stages.make_judge", lambda name, config, **_: made[name])
    out = str(tmp_path / "run")
    split = ["--n-train", "6", "--n-test", "15", "--n-negatives", "15", "--min-examples", "10"]
    rc, err = _run(capsys, "cache", "--out", out, *split, "--quiet")
    assert rc == 0, err
    stored, _ = load_config(tmp_path / "run" / "config.json")
    assert (stored.sampling.n_test, stored.sampling.n_negatives, stored.sampling.n_train) == (15, 15, 6)

    given = ["--judge", "reader", "--explainer", "namer", "--max-latents", "2", "--quiet"]
    rc, err = _run(capsys, "explain", "--out", out, *given)
    assert rc == 0, err
    rc, err = _run(
        capsys, "score", "--out", out, "--n-test", "15", "--scorers", "detection", "--controls", "none", *given
    )
    assert rc == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    split_seen = [
        (sum(j["activating"] for j in r["judgments"]), sum(not j["activating"] for j in r["judgments"])) for r in rows
    ]
    assert len(rows) == 2 and all(activating == 15 and negatives <= 15 for activating, negatives in split_seen)
    assert (15, 15) in split_seen  # silent windows to spare: 15 negatives too

    rc, err = _run(capsys, "score", "--out", out, "--n-test", "20", *given)
    assert rc == 2 and "sampling.n_test: run has 15, requested 20" in err
    rc, err = _run(capsys, "cache", "--out", out, "--n-negatives", "9", "--quiet")
    assert rc == 2 and "sampling.n_negatives: run has 15, requested 9" in err


def test_merge_takes_the_folders_fields_from_the_folder_and_nothing_else():
    stored = RunConfig(model="tiny", n_tokens=4096, sampling=SAMPLING, judge="openai:dead", latents=[7])
    requested = RunConfig(max_latents=3)
    merged = merge(stored, requested, {"max_latents"})
    assert (merged.model, merged.n_tokens, merged.sampling) == ("tiny", 4096, SAMPLING)
    assert (merged.judge, merged.latents, merged.max_latents) == (RunConfig().judge, None, 3)
    with pytest.raises(Exception, match="n_tokens: run has 4096, requested 100"):
        merge(stored, RunConfig(n_tokens=100), {"n_tokens"})


def test_a_run_that_ends_with_failed_latents_exits_1_and_says_where_the_reasons_are(
    tmp_path, tiny_cache, capsys, monkeypatch
):
    files = _tiny_run(tmp_path, tiny_cache, monkeypatch)
    monkeypatch.setattr(
        "autointerp.stages.latent_stages.make_judge",
        lambda name, config, **_: ScriptedJudge(lambda m: "no idea", model="vague"),
    )
    rc = main(["explain", "--out", str(files.folder), "--judge", "vague", "--max-latents", "2", "--quiet"])
    out = capsys.readouterr()
    assert rc == 1
    assert "2 of 2 latents failed" in out.err and f"status and error columns of {files.results}" in out.err
    rows = [json.loads(line) for line in files.explanations.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["failed", "failed"] and all(
        "no explanation could be read" in r["error"] for r in rows
    )


def test_judge_timeout_reaches_the_http_judge():
    from autointerp.cli import config_from_args
    from autointerp.llm.judges import make_judge

    argv = ["score", "--out", "x", "--judge", "openai:m", "--judge-url", "http://127.0.0.1:9/v1", "--no-cache"]
    config, _ = config_from_args(build_parser().parse_args([*argv, "--judge-timeout", "7.5"]))
    assert config.judge_timeout == 7.5 and make_judge(config.judge, config).timeout == 7.5
    assert RunConfig().judge_timeout >= 300
    with pytest.raises(ConfigError, match="--judge-timeout must be positive"):
        config_from_args(build_parser().parse_args([*argv, "--judge-timeout", "0"]))


def test_controls_and_the_tokens_explainer_reach_the_config(tmp_path, capsys):
    from autointerp.cli import config_from_args

    config, explicit = config_from_args(build_parser().parse_args(["run", "--out", "x", "--controls", "none"]))
    assert config.controls == "none" and "controls" in explicit
    assert build_parser().parse_args(["score", "--out", "x"]).__dict__.get("controls") is None  # default: the config's
    assert RunConfig().controls == "shuffled"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--out", "x", "--controls", "sometimes"])
    assert "--controls" in capsys.readouterr().err
    config, _ = config_from_args(build_parser().parse_args(["explain", "--out", "x", "--explainer", "tokens"]))
    assert config.explainer_model == "tokens"
    for extra in (["--best-of", "3"], ["--explainer-style", "contrastive"]):
        rc, err = _run(capsys, "run", "--out", str(tmp_path / "r"), "--explainer", "tokens", *extra)
        assert rc == 2 and "--explainer tokens" in err


def test_explain_by_tokens_loads_no_llm(tmp_path, capsys, monkeypatch):
    """On the embedded model and SAE: `explain --explainer tokens` labels latents without any judge."""

    def no_judge(name, config):
        raise AssertionError(f"a judge was built: {name}")

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"Also, in May {i} we also walked, and also ran; still, it rained." for i in range(80)))
    out = tmp_path / "r"
    assert main(["cache", "--out", str(out), "--corpus", str(corpus), "--n-tokens", "4096", "--quiet"]) == 0
    monkeypatch.setattr("autointerp.stages.latent_stages.make_judge", no_judge)
    rc = main(["explain", "--out", str(out), "--explainer", "tokens", "--max-latents", "4", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "4 latents" in captured.out and "mean  (" not in captured.out  # nothing scored: no empty score line
    rows = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["explainer_model"] == "tokens" for r in rows)
    for r in rows:  # a label that names tokens, or a failure that says why: never an empty label
        assert (r["status"], r["explanation"] is not None) in (("ok", True), ("failed", False))
        assert r["explanation"] is None or r["explanation"].startswith(("the token ", "the tokens "))
        assert r["status"] == "ok" or "no strongly-activating token" in r["error"]


def test_a_bug_keeps_its_traceback_and_a_users_mistake_exits_2(tmp_path, monkeypatch, capsys):
    """Only AutointerpError is the user's to fix: a ValueError from a bug is not dressed up as one."""
    from autointerp.corpus import CorpusError

    def bug(*args, **kwargs):
        raise ValueError("an index went wrong")

    monkeypatch.setattr("autointerp.stages.cache_stage.cache_stage", bug)
    with pytest.raises(ValueError, match="an index went wrong"):
        main(["cache", "--out", str(tmp_path / "r"), "--quiet"])

    def mistake(*args, **kwargs):
        raise CorpusError("the corpus is empty")

    monkeypatch.setattr("autointerp.stages.cache_stage.cache_stage", mistake)
    rc, err = _run(capsys, "cache", "--out", str(tmp_path / "r"), "--quiet")
    assert rc == 2 and err.startswith("autointerp: error: the corpus is empty\n")


def test_a_report_that_cannot_be_written_is_a_users_error(tmp_path, capsys):
    from helpers.report_fixtures import make_run
    from helpers.tiny_subjects import make_tiny_llama

    run = make_run(tmp_path / "run", make_tiny_llama(), max_latents=2)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc, err = _run(capsys, "report", str(run), "--site", str(blocker / "site"), "--quiet")
    assert rc == 2 and "file" in err
