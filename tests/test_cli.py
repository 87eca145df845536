"""The command line on bad input: every mistake gets a message that says what to do, exit code 2."""

from __future__ import annotations

import pytest
from conftest import write_sparsify_sae

from autointerp.cli import build_parser, main


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
    from autointerp.app import make_judge
    from autointerp.cli import config_from_args

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
