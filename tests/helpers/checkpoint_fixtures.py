"""A whole tiny checkpoint on disk: a subject model folder (a random 3-block Llama with a word-level
tokenizer), a sparsify run with an SAE on every block, and a text corpus of those words; what a user
points `autointerp run --hookpoints all` at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from helpers.report_fixtures import WORDS
from helpers.tiny_subjects import make_tiny_llama, write_sparsify_sae

HOOKPOINTS = ("layers.0", "layers.1", "layers.2")
VOCAB = ["<unk>", "</s>", *WORDS]
assert len(VOCAB) == 96


def write_subject(folder: Path, *, layers: int = 3, seed: int = 0) -> Path:
    """A Hugging Face model folder: the tiny Llama and a whitespace word-level tokenizer over VOCAB."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    make_tiny_llama(seed=seed, layers=layers).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)
    return folder


def write_sae_run(folder: Path, hookpoints=HOOKPOINTS, *, num_latents: int = 24, k: int = 3) -> Path:
    """A sparsify run folder with one TopK SAE per hookpoint (each its own random weights)."""
    for i, hookpoint in enumerate(hookpoints):
        write_sparsify_sae(folder / hookpoint, num_latents=num_latents, k=k, seed=10 + i)
    return folder


def write_saelens(folder: Path, hook_name: str, *, d_in: int = 16, d_sae: int = 20, seed: int = 0) -> Path:
    """A SAELens folder (cfg.json + sae_weights.safetensors) of a standard ReLU SAE reading `hook_name`."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "metadata": {"hook_name": hook_name}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {
            "W_enc": torch.randn(d_in, d_sae, generator=g),
            "b_enc": torch.randn(d_sae, generator=g) * 0.1,
            "W_dec": torch.randn(d_sae, d_in, generator=g),
            "b_dec": torch.randn(d_in, generator=g) * 0.1,
        },
        str(folder / "sae_weights.safetensors"),
    )
    return folder


def write_corpus(path: Path, *, documents: int = 80, words: int = 90, seed: int = 0) -> Path:
    """Documents of random words, one per line; a few words are common, as in text."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    weights /= weights.sum()
    lines = [" ".join(rng.choice(WORDS, size=words, p=weights)) for _ in range(documents)]
    path.write_text("\n".join(lines) + "\n")
    return path
