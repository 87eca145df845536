"""The README's worked examples, run as written: a Gemma Scope release on gemma-2-2b and an EleutherAI
sparsify checkpoint on Llama 3, each over a Hub corpus with an OpenAI-compatible explainer and judge.

The Hub is a stand-in on 127.0.0.1 (tests/helpers/fake_hub.py) holding tiny models, dictionaries and datasets
under the real names and in the real layouts; the explainer and the judge are fake OpenAI-compatible
servers put in place of the command's URLs; smaller sizes are appended to the command (the last value of
an option wins). Each run must cache with the contexts the dictionary asks for (BOS at position 0 of
every context, its context length), then explain and score every latent it chose.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.cache_files import cached
from helpers.fake_hub import FakeHub, point_clients_at
from helpers.fault_server import FaultServer
from helpers.tiny_subjects import gemma_scope_params, write_sparsify_sae

from autointerp.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
WORDS = [f"w{i}" for i in range(90)]
VOCAB = ["<unk>", "<s>", "</s>", *WORDS]
BOS = 1
SMALL = [
    "--device", "cpu", "--dtype", "float32", "--n-tokens", "4096", "--max-latents", "2", "--n-train", "6",
    "--n-test", "5", "--n-negatives", "5", "--min-examples", "5", "--controls", "none", "--no-cache",
]  # fmt: skip


def readme_command(name: str) -> list[str]:
    """The arguments of the README's `<!-- worked example: NAME -->` command (without `autointerp`)."""
    text = README.read_text()
    block = re.search(rf"<!-- worked example: {name} -->\n```bash\n(.*?)```", text, re.S)
    assert block is not None, f"README has no worked example {name!r}"
    argv = shlex.split(block.group(1).replace("\\\n", " "))
    assert argv[0] == "autointerp"
    return argv[1:]


def with_value(argv: list[str], option: str, value: str) -> list[str]:
    """`argv` with the value of `option` replaced (the option must be there)."""
    i = argv.index(option)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def model_repo(folder: Path, architecture: str, layers: int) -> dict[str, bytes]:
    """A tiny random model of `architecture` and a word-level tokenizer that puts BOS first, as Gemma's and
    Llama's do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    size = dict(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2)
    if architecture == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**size, num_key_value_heads=1, head_dim=8, max_position_embeddings=2048))
    else:
        model = LlamaForCausalLM(LlamaConfig(**size, num_key_value_heads=2, max_position_embeddings=2048))
    model.save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return _files(folder)


def dataset_repo(documents: int = 60, words: int = 80) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    text = [" ".join(rng.choice(WORDS, size=words, p=weights / weights.sum())) for _ in range(documents)]
    out = io.BytesIO()
    pd.DataFrame({"text": text}).to_parquet(out, row_group_size=10)
    return {"data/train-00000-of-00001.parquet": out.getvalue()}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = FakeHub("hf_fAkEtOkEn0123456789abcdefXYZ")
    with server:
        point_clients_at(server, monkeypatch, tmp_path / "caches")
        yield server


@pytest.fixture
def servers(monkeypatch):
    """(explainer, judge): an explainer that labels any excerpts, a judge that answers Yes or No."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-explainer-key")
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    rng = np.random.default_rng(0)

    def judge(request, n):
        return ("ok", "Yes" if rng.random() < 0.5 else "No", {"Yes": -0.4, "No": -1.1})

    with (
        FaultServer(lambda request, n: ("ok", "The marked tokens.\n[EXPLANATION]: the words w1 and w2")) as explainer,
        FaultServer(judge) as judged,
    ):
        yield explainer, judged


def run_example(
    name: str, out: Path, servers, capsys, *, explainer_key: bool
) -> tuple[str, dict, np.ndarray, pd.DataFrame]:
    """Run the README's command `name` with the fake servers' URLs and small sizes: (its output, config.json,
    the cached token rows, results.parquet)."""
    explainer, judge = servers
    argv = with_value(readme_command(name), "--out", str(out))
    argv = with_value(with_value(argv, "--explainer-url", explainer.url), "--judge-url", judge.url)
    rc = main([*argv, *SMALL])
    output = capsys.readouterr()
    assert rc == 0, output.err[-3000:]
    config = json.loads((out / "config.json").read_text())
    tokens, _ = cached(out / "cache")
    asked = [r for _, r, _ in explainer.requests if r.get("max_tokens", 0) > 1]
    assert asked and all("<<" in r["messages"][-1]["content"] for r in asked)  # excerpts with marked tokens
    # the OpenAI key goes to the API explainer alone; a local server is sent none
    openai_key = "Bearer sk-explainer-key"
    assert all((h["authorization"] == openai_key) == explainer_key for _, _, h in explainer.requests)
    assert all(h["authorization"] != openai_key for _, _, h in judge.requests)
    return output.out, config, tokens, pd.read_parquet(out / "results.parquet")


def assert_explained_and_scored(results: pd.DataFrame) -> None:
    """Both latents labelled by the explainer and judged on held-out examples (a latent that fires nearly
    everywhere in so small a cache may have no silent example, hence no AUROC)."""
    assert list(results["status"]) == ["ok", "ok"]
    assert set(results["explanation"]) == {"the words w1 and w2"}
    assert (results["detection_n"] > 0).all() and (results["detection_n_failed"] == 0).all()


@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="the saelens: names come from sae-lens")
def test_the_gemma_scope_example(hub, servers, tmp_path, capsys):
    hub.add_files("google/gemma-2-2b", model_repo(tmp_path / "gemma", "gemma2", layers=13))
    npz = tmp_path / "params.npz"
    np.savez(npz, **gemma_scope_params(d_in=16, n=24))
    hub.add_files("google/gemma-scope-2b-pt-res", {"layer_12/width_16k/average_l0_82/params.npz": npz.read_bytes()})
    hub.add_files("monology/pile-uncopyrighted", dataset_repo(), repo_type="dataset")

    output, config, tokens, results = run_example("gemma-scope", tmp_path / "run", servers, capsys, explainer_key=True)
    contexts = config["resolved"]["contexts"]
    assert contexts["prepend_bos"] is True and contexts["ctx_len"] == 1024  # Gemma Scope's, as SAELens loads it
    assert tokens.shape[1] == 1024 and (tokens[:, 0] == BOS).all()
    assert "explainer style: excerpts" in output
    assert config["resolved"]["hookpoint"] == "layers.12"
    assert_explained_and_scored(results)


def test_the_sparsify_example(hub, servers, tmp_path, capsys):
    hub.add_files("meta-llama/Meta-Llama-3-8B", model_repo(tmp_path / "llama", "llama", layers=11))
    run = tmp_path / "sae-run"
    write_sparsify_sae(run / "layers.10", d_in=16, num_latents=24, k=4, seed=1)
    write_sparsify_sae(run / "layers.9", d_in=16, num_latents=24, k=4, seed=2)
    (run / "config.json").write_text(json.dumps({"ctx_len": 2048, "hookpoints": ["layers.9", "layers.10"]}))
    hub.add_files("EleutherAI/sae-llama-3-8b-32x", _files(run))
    hub.add_files("EleutherAI/SmolLM2-135M-10B", dataset_repo(), repo_type="dataset")

    output, config, tokens, results = run_example("sparsify", tmp_path / "run", servers, capsys, explainer_key=False)
    contexts = config["resolved"]["contexts"]
    assert contexts["packing"] == "sparsify" and contexts["ctx_len"] == 2048  # the run's config.json
    assert tokens.shape[1] == 2048 and (tokens[:, 0] == BOS).all()  # the tokenizer's BOS, as sparsify chunks
    assert not [p for p in hub.downloads() if p.startswith("layers.9/")]
    assert_explained_and_scored(results)
