"""Models and dictionaries by Hub id, fetched from a fake Hub on 127.0.0.1 (never the real one):
only the files a run needs, pinned to a commit that the provenance records, from the local cache
alone with HF_HUB_OFFLINE, and one-line errors naming what is missing."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import fake_hub
from helpers.tiny_subjects import gemma_scope_params, make_tiny_llama, write_sparsify_sae

from autointerp.subjects import sources
from autointerp.subjects.attach import open_dictionary
from autointerp.subjects.dictionaries import load_dictionary, load_sparsify
from autointerp.subjects.model import ModelError, load_subject, load_tokenizer
from autointerp.subjects.sources import SourceError, locate_dictionary

MODEL = "alice/tiny-llama"
SAE = "alice/tiny-sae"
WORDS = [f"w{i}" for i in range(90)]
# sae-lens is only read (its directory of releases), never imported: a find_spec is enough to know
needs_saelens = pytest.mark.skipif(
    importlib.util.find_spec("sae_lens") is None, reason="sae-lens is not installed (pip install -e '.[test]')"
)

hub = fake_hub.hub  # the fake Hub fixture


def _offline(monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def _folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _model_files(tmp_path: Path, seed: int) -> dict[str, bytes]:
    """A tiny Llama and a word-level tokenizer as a Hub repo holds them, plus copies that must never be
    fetched: pickled weights and an ONNX export."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / f"model-{seed}"
    make_tiny_llama(seed=seed).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "</s>", *WORDS])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)
    files = _folder_files(folder)
    files["pytorch_model.bin"] = b"pickled weights: never fetched"
    files["onnx/model.onnx"] = b"an export: never fetched"
    files["README.md"] = b"# tiny llama"
    return files


def _sae_repo(tmp_path: Path) -> dict[str, bytes]:
    """A sparsify run with two hookpoints, as EleutherAI's repos lay them out."""
    run = tmp_path / "sae-run"
    write_sparsify_sae(run / "layers.0", seed=1)
    write_sparsify_sae(run / "layers.1", seed=2)
    return {**_folder_files(run), "README.md": b"# two hookpoints"}


def _weights(model) -> torch.Tensor:
    return model.model.embed_tokens.weight.detach().float()


# ----------------------------------------------------------------------------------------------- models


def test_hub_model_is_fetched_at_a_pinned_commit_without_pickles(hub, tmp_path):
    v1 = hub.add_files(MODEL, _model_files(tmp_path, seed=1), tags=("v1",))
    main = hub.add_files(MODEL, {"model.safetensors": _model_files(tmp_path, seed=2)["model.safetensors"]})

    latest = load_subject(MODEL, dtype=torch.float32)
    assert latest.name == f"{MODEL}@{main}"  # the Hub id and the commit, not a path in the cache
    assert torch.equal(_weights(latest.model), _weights(make_tiny_llama(seed=2)))
    assert latest.tokenizer("w3 w4")["input_ids"] == [5, 6]
    fetched = hub.downloads()
    assert "model.safetensors" in fetched and "tokenizer.json" in fetched
    assert not {"pytorch_model.bin", "onnx/model.onnx", "README.md"} & set(fetched)

    pinned = load_subject(MODEL, revision="v1", dtype=torch.float32)
    assert pinned.name == f"{MODEL}@{v1}"
    assert torch.equal(_weights(pinned.model), _weights(make_tiny_llama(seed=1)))
    assert not hub.unhandled


def test_offline_uses_the_local_cache_only(hub, tmp_path, monkeypatch):
    sha = hub.add_files(MODEL, _model_files(tmp_path, seed=1), tags=("v1",))
    load_subject(MODEL)
    asked = len(hub.requests)
    _offline(monkeypatch)
    again = load_subject(MODEL)
    assert again.name == f"{MODEL}@{sha}"
    assert load_tokenizer(MODEL)("w1")["input_ids"] == [3]
    assert len(hub.requests) == asked  # HF_HUB_OFFLINE: not one request
    with pytest.raises(SourceError, match="'bob/absent' is not in the local Hub cache.*HF_HUB_OFFLINE") as e:
        load_subject("bob/absent")
    assert "\n" not in str(e.value)
    with pytest.raises(SourceError, match="revision 'v1' of 'alice/tiny-llama' is not in the local Hub cache"):
        load_subject(MODEL, revision="v1")  # only main was fetched


def test_unreachable_hub_falls_back_to_the_cache(hub, tmp_path, monkeypatch):
    import socket

    import huggingface_hub.constants as hf_constants

    sha = hub.add_files(MODEL, _model_files(tmp_path, seed=1))
    load_subject(MODEL)
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(hf_constants, "ENDPOINT", dead)
    assert load_subject(MODEL).name == f"{MODEL}@{sha}"
    with pytest.raises(SourceError, match="'bob/absent' is not in the local Hub cache and the Hub at .* could not"):
        load_subject("bob/absent")


def test_hub_model_errors_name_what_is_missing(hub, tmp_path):
    hub.add_files(MODEL, _model_files(tmp_path, seed=1))
    for model, revision, expected in (
        ("alice/nope", None, "no repo 'alice/nope' on http://127.0.0.1"),
        (MODEL, "v9", "'alice/tiny-llama' has no revision 'v9'"),
    ):
        with pytest.raises(SourceError, match=expected) as e:
            load_subject(model, revision=revision)
        assert "\n" not in str(e.value)
    pickles = {k: v for k, v in _model_files(tmp_path, seed=1).items() if k != "model.safetensors"}
    hub.add_files("alice/pickled", pickles)
    with pytest.raises(SourceError, match="no safetensors weights .only pytorch_model.bin.*never pickled"):
        load_subject("alice/pickled")


def test_a_local_folder_wins_over_a_hub_repo_of_the_same_name(hub, tmp_path, monkeypatch):
    hub.add_files(MODEL, _model_files(tmp_path, seed=1))
    monkeypatch.chdir(tmp_path)
    local = Path(MODEL)
    for name, data in _model_files(tmp_path, seed=2).items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    subject = load_subject(MODEL, dtype=torch.float32)
    assert subject.name == MODEL and torch.equal(_weights(subject.model), _weights(make_tiny_llama(seed=2)))
    assert not hub.requests
    with pytest.raises(ModelError, match="--model-revision v1 is for Hub models"):
        load_subject(MODEL, revision="v1")


def test_the_fake_hub_serves_transformers_own_download(hub, tmp_path):
    """The fake speaks what transformers' from_pretrained asks for too (repo info, trees, HEAD/GET)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub.add_files(MODEL, _model_files(tmp_path, seed=3))
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    assert torch.equal(_weights(model), _weights(make_tiny_llama(seed=3)))
    assert AutoTokenizer.from_pretrained(MODEL)("w2")["input_ids"] == [4]
    assert not hub.unhandled


@pytest.mark.slow
def test_the_cli_in_a_fresh_process_honours_hf_hub_offline(hub, tmp_path):
    """HF_HUB_OFFLINE, HF_HUB_CACHE and HF_ENDPOINT as a user sets them: read when huggingface_hub starts."""
    import subprocess

    model_sha = hub.add_files(MODEL, _model_files(tmp_path, seed=0))
    sae_sha = hub.add_files(SAE, _sae_repo(tmp_path))
    load_tokenizer(MODEL)
    locate_dictionary(SAE, ["layers.1"])  # the tokenizer and one hookpoint are cached; the weights are not
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS) for _ in range(8)))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    argv = [sys.executable, "-m", "autointerp.cli", "cache", "--dictionary", SAE, "--hookpoint", "layers.1"]
    argv += ["--model", MODEL, "--corpus", str(corpus), "--n-tokens", "512", "--quiet"]
    asked = len(hub.requests)
    done = subprocess.run([*argv, "--out", str(tmp_path / "a")], env=env, capture_output=True, text=True)
    assert (
        done.returncode == 2
        and "its safetensors weights are not in the local Hub cache (HF_HUB_OFFLINE is set)" in done.stderr
    )
    assert len(done.stderr.strip().splitlines()) == 2  # the error and the hint about AUTOINTERP_DEBUG
    load_subject(MODEL)  # now the weights too
    asked = len(hub.requests)
    done = subprocess.run([*argv, "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(hub.requests) == asked  # not one request
    resolved = json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]
    assert (resolved["model"], resolved["dictionary"]) == (f"{MODEL}@{model_sha}", f"{SAE}@{sae_sha}/layers.1")


# ------------------------------------------------------------------------------------------ dictionaries


def test_only_the_requested_hookpoint_is_fetched(hub, tmp_path, tiny_llama):
    sha = hub.add_files(SAE, _sae_repo(tmp_path))
    (source,) = locate_dictionary(SAE, ["layers.1"])
    assert sorted(hub.downloads()) == ["layers.1/cfg.json", "layers.1/sae.safetensors"]
    assert source.name == f"{SAE}@{sha}/layers.1" and source.hookpoint == "layers.1"

    encoder, hp = open_dictionary(tiny_llama, SAE, "layers.1")
    assert encoder.name == f"{SAE}@{sha}/layers.1" and hp.module_path == "layers.1"
    local = load_sparsify(tmp_path / "sae-run", "layers.1")
    x = torch.randn(5, 16)
    assert torch.equal(encoder.encode(x), local.encode(x))


def test_a_sparsify_run_config_is_fetched_with_its_hookpoint(hub, tmp_path):
    """The run's config.json above the hookpoint folders says how long its contexts were: it comes too."""
    from autointerp.subjects.contexts import recorded_contexts

    run_config = {"ctx_len": 512, "hookpoints": ["layers.0", "layers.1"], "sae": {"k": 4}}
    hub.add_files(SAE, {**_sae_repo(tmp_path), "config.json": json.dumps(run_config).encode()})
    (source,) = locate_dictionary(SAE, ["layers.1"])
    assert sorted(hub.downloads()) == ["config.json", "layers.1/cfg.json", "layers.1/sae.safetensors"]
    (recorded,) = recorded_contexts([source])
    assert (recorded.packing, recorded.ctx_len) == ("sparsify", 512)


def test_several_hookpoints_fetch_only_their_files(hub, tmp_path, tiny_llama):
    """`--hookpoints` on a Hub sparsify run: the files of the named hookpoints, or of every one with `all`."""
    from autointerp.subjects.attach import open_dictionaries
    from autointerp.subjects.sources import ALL, locate_dictionaries

    files = _sae_repo(tmp_path)
    for n in (2, 10):
        write_sparsify_sae(tmp_path / "sae-run" / f"layers.{n}", seed=n)
        files |= _folder_files(tmp_path / "sae-run" / f"layers.{n}", f"layers.{n}/")
    sha = hub.add_files(SAE, files)
    chosen = locate_dictionaries(SAE, ["layers.1", "layers.0"])
    assert [s.hookpoint for s in chosen] == ["layers.1", "layers.0"]
    # (the two cfg.json are the same bytes: the Hub cache stores that blob once, so one of them is not fetched)
    fetched = set(hub.downloads())
    assert {"layers.0/sae.safetensors", "layers.1/sae.safetensors"} <= fetched
    assert fetched <= {f"layers.{i}/{f}" for i in (0, 1) for f in ("cfg.json", "sae.safetensors")}
    every = locate_dictionaries(SAE, [ALL])
    assert [s.name for s in every] == [f"{SAE}@{sha}/layers.{i}" for i in (0, 1, 2, 10)]  # as people count
    with pytest.raises(
        SourceError, match=f"{SAE}@{sha} has no hookpoint layers.7; it has layers.0, layers.1, layers.10, layers.2"
    ):
        locate_dictionaries(SAE, ["layers.0", "layers.7"])
    opened = open_dictionaries(tiny_llama, locate_dictionaries(SAE, ["layers.0", "layers.1"]), None)
    assert [hp.name for _, hp in opened] == ["layers.0", "layers.1"]


def test_hookpoint_and_folder_errors_list_what_the_repo_has(hub, tmp_path):
    sha = hub.add_files(SAE, _sae_repo(tmp_path))
    cases = {
        (SAE, "layers.7"): f"dictionary {SAE}@{sha} has no hookpoint layers.7; it has layers.0, layers.1",
        (SAE, None): "several hookpoints, pick one with --hookpoint: ['layers.0', 'layers.1']",
        (f"{SAE}/layers.9", None): f"dictionary {SAE}@{sha} has no folder 'layers.9'",
    }
    for (spec, hookpoint), expected in cases.items():
        with pytest.raises(SourceError) as e:
            locate_dictionary(spec, [hookpoint] if hookpoint else None)
        assert expected in str(e.value) and "\n" not in str(e.value)
    assert not hub.downloads()


def test_a_missing_file_revision_or_repo_is_named(hub, tmp_path):
    files = _sae_repo(tmp_path)
    del files["layers.1/sae.safetensors"]
    sha = hub.add_files(SAE, files)
    with pytest.raises(SourceError, match=f"{SAE}@{sha}: layers.1/cfg.json has no weights beside it"):
        locate_dictionary(SAE, ["layers.1"])
    with pytest.raises(SourceError, match=f"'{SAE}' has no revision 'v2'"):
        locate_dictionary(SAE, ["layers.0"], revision="v2")
    with pytest.raises(SourceError, match="no local path 'alice/nothing' and no repo 'alice/nothing'"):
        locate_dictionary("alice/nothing", ["layers.0"])


def test_dictionary_revision_pins_a_tag(hub, tmp_path):
    old = hub.add_files(SAE, _sae_repo(tmp_path), tags=("v1",))
    write_sparsify_sae(tmp_path / "newer" / "layers.1", seed=7)
    hub.add_files(SAE, _folder_files(tmp_path / "newer"))
    (source,) = locate_dictionary(SAE, ["layers.1"], revision="v1")
    assert source.name == f"{SAE}@{old}/layers.1"
    x = torch.randn(3, 16)
    assert torch.equal(
        load_dictionary(source.path, "layers.1").encode(x), load_sparsify(tmp_path / "sae-run", "layers.1").encode(x)
    )


# --------------------------------------------------------------------------------------- Gemma Scope npz


def _npz_bytes(arrays: dict[str, np.ndarray], tmp_path: Path) -> bytes:
    path = tmp_path / "params.npz"
    np.savez(path, **arrays)
    return path.read_bytes()


def test_gemma_scope_from_the_hub_by_folder(hub, tmp_path, tiny_llama):
    repo = "google/gemma-scope-2b-pt-res"
    path = "layer_1/width_16k/average_l0_5"
    sha = hub.add_files(
        repo,
        {
            f"{path}/params.npz": _npz_bytes(gemma_scope_params(), tmp_path),
            "layer_0/width_16k/average_l0_9/params.npz": b"x",
        },
    )
    encoder, hp = open_dictionary(tiny_llama, f"{repo}/{path}")
    assert encoder.name == f"{repo}@{sha}/{path}" and hp.module_path == "layers.1" and hp.side == "output"
    assert hub.downloads() == [f"{path}/params.npz"]
    with pytest.raises(
        SourceError, match="holds no dictionary itself; dictionaries are in layer_0/.*, layer_1/.*name one"
    ):
        locate_dictionary(repo)


# ------------------------------------------------------------------------------------- SAELens releases


def _saelens_folder(tmp_path: Path) -> dict[str, bytes]:
    from safetensors.torch import save_file

    folder = tmp_path / "saelens"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    cfg = {"architecture": "standard", "d_in": 16, "d_sae": 24, "metadata": {"hook_name": "blocks.0.hook_resid_pre"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = {
        "W_enc": torch.randn(16, 24, generator=g),
        "W_dec": torch.randn(24, 16, generator=g),
        "b_enc": torch.randn(24, generator=g),
        "b_dec": torch.randn(16, generator=g),
    }
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    save_file({"sparsity": torch.zeros(24)}, str(folder / "sparsity.safetensors"))
    return _folder_files(folder)


@needs_saelens
def test_saelens_release_resolves_through_sae_lens_directory(hub, tmp_path):
    # the names of a real release in the installed sae-lens: served by the fake Hub
    folder = "blocks.0.hook_resid_pre"
    sha = hub.add_files(
        "jbloom/GPT2-Small-SAEs-Reformatted",
        {f"{folder}/{k}": v for k, v in _saelens_folder(tmp_path).items()}
        | {"blocks.1.hook_resid_pre/cfg.json": b"{}"},
    )
    (source,) = locate_dictionary(f"saelens:gpt2-small-res-jb/{folder}")
    assert source.name == f"jbloom/GPT2-Small-SAEs-Reformatted@{sha}/{folder}"
    assert sorted(hub.downloads()) == [f"{folder}/cfg.json", f"{folder}/sae_weights.safetensors"]
    encoder = load_dictionary(source.path, source.hookpoint, source.cfg_overrides)
    assert encoder.format == "saelens" and encoder.hookpoint == "blocks.0.hook_resid_pre"

    gemma = "google/gemma-scope-2b-pt-res"
    hub.add_files(gemma, {"layer_12/width_16k/average_l0_82/params.npz": _npz_bytes(gemma_scope_params(), tmp_path)})
    (source,) = locate_dictionary("saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    assert source.hookpoint == "layers.12" and source.path.parts[-3:] == ("layer_12", "width_16k", "average_l0_82")
    assert load_dictionary(source.path, source.hookpoint).kind == "jumprelu"


@needs_saelens
def test_saelens_release_errors(hub, monkeypatch):
    cases = {
        "saelens:gpt2-small-res-jbb/blocks.0.hook_resid_pre": "no release 'gpt2-small-res-jbb'; close: gpt2-small",
        "saelens:gpt2-small-res-jb/blocks.99.hook_resid_pre": "has no SAE 'blocks.99.hook_resid_pre'",
        "saelens:llama_scope_lxr_8x/l0r_8x": "converts with 'llama_scope', which autointerp does not read",
        "saelens:gpt2-small-res-jb": "expected saelens:RELEASE/SAE_ID",
        "saelens:gpt2-small-res-jb/blocks.0.hook_resid_pre": "no repo 'jbloom/GPT2-Small-SAEs-Reformatted'",
    }
    for spec, expected in cases.items():
        with pytest.raises(SourceError) as e:
            locate_dictionary(spec)
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # as if it were not installed
    with pytest.raises(SourceError, match=r"sae-lens is not installed: pip install 'autointerp\[saelens\]'"):
        locate_dictionary("saelens:gpt2-small-res-jb/blocks.0.hook_resid_pre")


@pytest.mark.slow
def test_our_reading_of_the_directory_is_sae_lens_own():
    """sae-lens takes ~10 s to import, so we read its directory file without it: the same releases."""
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    theirs = get_pretrained_saes_directory()
    ours = sources.saelens_directory()
    assert set(ours) == set(theirs)
    for name, release in theirs.items():
        assert (ours[name].repo_id, ours[name].conversion, ours[name].saes) == (
            release.repo_id,
            release.conversion_func,
            release.saes_map,
        )


# -------------------------------------------------------------------------------- a run, end to end


def test_a_run_from_hub_ids_records_them_and_its_later_stages_keep_the_commit(hub, tmp_path, monkeypatch, capsys):
    from helpers.report_fixtures import SAMPLING, judge

    from autointerp.api import provenance
    from autointerp.cli import main
    from autointerp.config import RunConfig, load_config
    from autointerp.llm.scripted import ScriptedJudge
    from autointerp.results import RunFiles, materialize
    from autointerp.stages.latent_stages import latent_stages

    model_sha = hub.add_files(MODEL, _model_files(tmp_path, seed=0))
    sae_sha = hub.add_files(SAE, _sae_repo(tmp_path))
    corpus = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS, size=200)) for _ in range(30)))
    out = tmp_path / "run"
    argv = ["cache", "--out", str(out), "--model", MODEL, "--dictionary", SAE, "--hookpoint", "layers.1"]
    rc = main([*argv, "--corpus", str(corpus), "--n-tokens", "4096", "--dtype", "float32", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    config, resolved = load_config(out / "config.json")
    assert resolved["model"] == f"{MODEL}@{model_sha}"
    assert resolved["dictionary"] == f"{SAE}@{sae_sha}/layers.1"
    assert "hf-cache" not in (out / "config.json").read_text()  # no path in the local Hub cache
    assert not [p for p in hub.downloads() if p.startswith("layers.0/")]

    # main moves on to a broken tokenizer: the later stages load the commit the cache was built from,
    # already in the local cache, so they ask the Hub nothing
    hub.add_files(MODEL, {"tokenizer.json": b"not a tokenizer"})
    asked = len(hub.requests)
    files = RunFiles(out)
    config = RunConfig.from_dict({**config.to_dict(), "sampling": SAMPLING.__dict__, "max_latents": 3})
    judges = {config.judge: ScriptedJudge(judge, model="judge")}
    judges[config.explainer_model] = ScriptedJudge(lambda m: "[EXPLANATION]: w1, w2", model="explainer")
    summary = asyncio.run(latent_stages(files, config, {"explain", "score"}, progress=False, judges=judges))
    assert summary.scored == 3 and len(hub.requests) == asked
    materialize(files, provenance(resolved), config.scorers)
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["model"]) == {f"{MODEL}@{model_sha}"}
    assert set(table["dictionary"]) == {f"{SAE}@{sae_sha}/layers.1"}
