"""The subject-model loader (embedded SmolLM2 via a bf16 cache, local folders) and the shipped default SAE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autointerp.subjects import model as subject_model
from autointerp.subjects.model import EMBEDDED_NAME, ModelError, Subject, embedded_cache_path, load_subject

SAE_DIR = Path(__file__).resolve().parents[2] / "data" / "sae" / "smollm2-135m-res-topk" / "layers.3"


# ------------------------------------------------------------------------------------------ fast tests


def test_missing_folder_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="no-such-model"):
        load_subject(str(missing))


def test_folder_that_is_not_a_model_names_it(tmp_path):
    folder = tmp_path / "just-some-files"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="just-some-files.*config.json"):
        load_subject(str(folder))
    (folder / "config.json").write_text("{}")  # has a config, but not a model's
    with pytest.raises(ModelError, match="just-some-files"):
        load_subject(str(folder))


def test_local_folder_loads(tmp_path, tiny_llama):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["<unk>", "hello", "world"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)

    subject = load_subject(str(folder), dtype=torch.float32)
    assert isinstance(subject, Subject)
    assert subject.name == str(folder)
    assert not subject.model.training
    assert subject.model.dtype == torch.float32
    assert subject.tokenizer("hello world")["input_ids"] == [1, 2]


def test_cache_dir_default_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path))
    assert embedded_cache_path() == tmp_path / "models" / "smollm2-135m-instruct-bf16"
    assert embedded_cache_path(tmp_path / "x") == tmp_path / "x" / "models" / "smollm2-135m-instruct-bf16"


def test_shipped_sae_file():
    from safetensors import safe_open

    cfg = json.loads((SAE_DIR / "cfg.json").read_text())
    assert cfg == {
        "activation": "topk",
        "expansion_factor": 8,
        "normalize_decoder": True,
        "num_latents": 4608,
        "k": 16,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": 576,
    }
    with safe_open(str(SAE_DIR / "sae.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
        t = {k: f.get_tensor(k) for k in f.keys()}
    shapes = {"encoder.weight": (4608, 576), "encoder.bias": (4608,), "W_dec": (4608, 576), "b_dec": (576,)}
    for name, shape in shapes.items():
        assert tuple(t[name].shape) == shape, name
        assert t[name].dtype == torch.float16, name
        assert torch.isfinite(t[name]).all(), name
    norms = t["W_dec"].float().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=2e-3)

    info = json.loads((SAE_DIR / "training.json").read_text())
    assert info["hookpoint"] == "layers.3"
    held = info["heldout"]
    assert 0 < held["fvu"] < 0.25  # the bound data/README.md gives for choosing the default
    assert held["l0"] == pytest.approx(16, abs=1)
    assert 0 <= held["dead_fraction"] < 0.1
    assert info["tokens"]["train"] > 0 and info["tokens"]["heldout"] > 0


# ------------------------------------------------------------------------------------------ slow tests


@pytest.mark.slow
def test_embedded_subject_converts_once_and_matches_gguf(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    subject = load_subject(None, cache_dir=cache)
    folder = embedded_cache_path(cache)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left behind
    assert subject.name == EMBEDDED_NAME
    assert not subject.model.training
    assert subject.model.dtype == torch.bfloat16
    assert subject.model.config.num_hidden_layers == 30 and subject.model.config.hidden_size == 576
    assert getattr(subject.model.config, "quantization_config", None) is None
    m = subject.model
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # tied after the round trip

    # A second load reuses the folder: it must not convert again, nor rewrite the weights.
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    def no_convert(*a, **k):
        raise AssertionError("converted the GGUF again instead of reusing the cache")

    monkeypatch.setattr(subject_model, "convert_gguf_to_folder", no_convert)
    again = load_subject("smollm2", cache_dir=cache)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert again.name == EMBEDDED_NAME

    # The cached model computes what the GGUF-loaded one computes.
    gguf_model, gguf_tok = subject_model.load_gguf(subject_model.embedded_gguf_path(), dtype=torch.bfloat16)
    text = ["The capital of France is Paris, and the capital of Italy is", "Once upon a time, there"]
    ids = again.tokenizer(text, return_tensors="pt", padding=True)
    ref_ids = gguf_tok(text, return_tensors="pt", padding=True)["input_ids"]
    assert ids["input_ids"].tolist() == ref_ids.tolist()
    with torch.no_grad():
        ours = again.model(**ids, output_hidden_states=True)
        ref = gguf_model(**ids).logits
    mask = ids["attention_mask"].bool()
    diff = (ours.logits.float() - ref.float()).abs()[mask]
    assert diff.max() <= 0.05 * ref.float().abs().max(), diff.max()
    assert torch.equal(ours.logits.argmax(-1)[mask], ref.argmax(-1)[mask])
    assert again.tokenizer.decode(ours.logits[0, -1].argmax()).strip() == "Rome"

    # The hookpoint convention used for the shipped SAE: layers.3 (block 3's output) = hidden_states[4].
    box = {}
    handle = again.model.model.layers[3].register_forward_hook(
        lambda _m, _i, out: box.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            again.model(**ids)
    finally:
        handle.remove()
    assert len(ours.hidden_states) == 31
    assert torch.equal(box["h"], ours.hidden_states[4])
