"""Objects from Python: `autointerp.Run(out, model=(model, tokenizer), dictionary=<object>)` caches the
activations that the same model and dictionary saved to disk and named by path give, with the contexts the
object's own cfg asks for; config.json says what the objects were, and a folder cached from objects
cannot be resumed without them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_contexts
import torch
from helpers.tiny_subjects import write_sparsify_sae
from safetensors.torch import load_file
from test_contexts import BOS, CTX, D_IN, D_SAE, HOOK, assert_same_activations, cached, saelens_sae

from autointerp.api import Run
from autointerp.subjects.model import ModelError

subject = test_contexts.subject  # a tiny 3-block Llama folder whose tokenizer puts BOS first
corpus = test_contexts.corpus


@pytest.fixture(scope="module")
def loaded(subject):
    """The subject model and tokenizer as a user holds them in a notebook."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(subject, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(subject)


def cache_of(out: Path, corpus_path: Path, **options) -> tuple[dict, np.ndarray, np.ndarray]:
    """(config.json, token rows, dense activations) of a run cached with `options`."""
    Run(out, progress=False, echo=None, corpus=str(corpus_path), n_tokens=100_000, **options).cache()
    return json.loads((out / "config.json").read_text()), *cached(out / "cache")


def test_a_saelens_sae_object_caches_what_its_saved_copy_does_with_its_cfgs_contexts(tmp_path, subject, corpus, loaded):
    corpus_path, _ = corpus
    sae = saelens_sae(tmp_path / "sae", prepend_bos=True, context_size=CTX, sequence_separator_token="bos")
    _, tokens, by_path = cache_of(
        tmp_path / "by_path", corpus_path, model=str(subject), dictionary=str(tmp_path / "sae"), dtype="float32"
    )
    config, object_tokens, by_object = cache_of(tmp_path / "by_object", corpus_path, model=loaded, dictionary=sae)

    np.testing.assert_array_equal(object_tokens, tokens)
    assert (tokens[:, 0] == BOS).all() and tokens.shape[1] == CTX  # the object's cfg: BOS first, its context_size
    assert_same_activations(by_object, by_path)
    assert config["config"]["model"].startswith("python:LlamaForCausalLM:")
    assert config["config"]["dictionary"] == f"python:saelens:StandardSAE:{HOOK}"
    recorded = config["resolved"]["dictionary_cfg"]
    assert recorded["metadata"]["prepend_bos"] is True and recorded["d_sae"] == D_SAE
    assert config["resolved"]["contexts"]["prepend_bos"] is True
    # the folder resumes when handed the same objects again (its model and dictionary options agree)
    again = Run(
        tmp_path / "by_object", progress=False, echo=None, model=loaded, dictionary=sae, corpus=str(corpus_path)
    )
    assert again.cache()["n_tokens"] == config["resolved"]["n_tokens"]


def test_a_sparsify_coder_object_caches_what_its_saved_copy_does(tmp_path, subject, corpus, loaded):
    sparsify = pytest.importorskip("sparsify")
    corpus_path, _ = corpus
    torch.manual_seed(3)
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=4))
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    coder.save_to_disk(tmp_path / "coder")
    common = {"hookpoint": "layers.1", "ctx_len": CTX}
    _, tokens, by_path = cache_of(
        tmp_path / "by_path",
        corpus_path,
        model=str(subject),
        dictionary=str(tmp_path / "coder"),
        dtype="float32",
        **common,
    )
    model, tokenizer = loaded
    config, object_tokens, by_object = cache_of(
        tmp_path / "by_object", corpus_path, model=model, tokenizer=tokenizer, dictionary=coder, **common
    )
    np.testing.assert_array_equal(object_tokens, tokens)
    assert_same_activations(by_object, by_path)
    assert config["config"]["dictionary"] == "python:sparsify:SparseCoder:layers.1"
    assert config["resolved"]["dictionary_cfg"]["num_latents"] == D_SAE


class TopKCoder(torch.nn.Module):
    """A dictionary as a researcher writes one: nothing but weights and `encode`."""

    def __init__(self, weights: dict[str, torch.Tensor], k: int):
        super().__init__()
        self.W_enc = torch.nn.Parameter(weights["encoder.weight"])
        self.b_enc = torch.nn.Parameter(weights["encoder.bias"])
        self.W_dec = torch.nn.Parameter(weights["W_dec"])
        self.b_dec = torch.nn.Parameter(weights["b_dec"])
        self.k = k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu((x - self.b_dec) @ self.W_enc.T + self.b_enc)
        values, indices = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, indices, values)


def test_a_module_with_encode_caches_what_the_same_weights_saved_as_a_checkpoint_do(tmp_path, subject, corpus, loaded):
    corpus_path, _ = corpus
    folder = write_sparsify_sae(tmp_path / "coder", d_in=D_IN, num_latents=D_SAE, k=4, seed=5)
    module = TopKCoder(load_file(str(folder / "sae.safetensors")), k=4)
    common = {"hookpoint": "layers.1", "ctx_len": CTX}
    _, tokens, by_path = cache_of(
        tmp_path / "by_path", corpus_path, model=str(subject), dictionary=str(folder), dtype="float32", **common
    )
    config, object_tokens, by_object = cache_of(
        tmp_path / "by_object", corpus_path, model=loaded, dictionary=module, **common
    )
    np.testing.assert_array_equal(object_tokens, tokens)
    assert_same_activations(by_object, by_path)
    assert config["resolved"]["dictionary_cfg"] == {"class": f"{__name__}.TopKCoder"}
    assert config["resolved"]["num_latents"] == D_SAE


def test_a_folder_cached_from_objects_needs_the_same_objects_again(tmp_path, corpus):
    corpus_path, _ = corpus
    run = Run(
        tmp_path / "run", progress=False, echo=None, model="python:LlamaForCausalLM:gone", corpus=str(corpus_path)
    )
    with pytest.raises(ModelError, match=r"resume the folder with autointerp.Run\(\.\.\., model=<the same object>\)"):
        run.cache()
