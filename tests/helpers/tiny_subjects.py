"""A tiny random Llama, tiny dictionaries written as their libraries write them, and a tiny activation cache
built from them: what stage tests run on instead of a real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def make_tiny_llama(seed: int = 0, vocab: int = 96, hidden: int = 16, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


def write_sparsify_sae(
    folder: Path, d_in: int = 16, num_latents: int = 24, k: int = 4, seed: int = 0, transcode: bool = False
) -> Path:
    """A random TopK SAE in sparsify's layout; returns the hookpoint folder."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "activation": "topk",
                "expansion_factor": 0,
                "normalize_decoder": True,
                "num_latents": num_latents,
                "k": k,
                "multi_topk": False,
                "skip_connection": False,
                "transcode": transcode,
                "d_in": d_in,
            }
        )
    )
    save_file(
        {
            "encoder.weight": torch.randn(num_latents, d_in, generator=g),
            "encoder.bias": torch.randn(num_latents, generator=g) * 0.1,
            "W_dec": torch.randn(num_latents, d_in, generator=g),
            "b_dec": torch.randn(d_in, generator=g) * 0.1,
        },
        str(folder / "sae.safetensors"),
    )
    return folder


def gemma_scope_params(d_in: int = 16, n: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a random Gemma Scope JumpReLU SAE, as its params.npz holds them."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, n)).astype(np.float32),
        "W_dec": rng.normal(size=(n, d_in)).astype(np.float32),
        "b_enc": rng.normal(size=n).astype(np.float32) * 0.1,
        "b_dec": rng.normal(size=d_in).astype(np.float32) * 0.1,
        "threshold": np.abs(rng.normal(size=n)).astype(np.float32),
    }


def token_rows(n_rows: int, ctx_len: int = 64, vocab: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n_rows):
        yield rng.integers(0, vocab, size=ctx_len).astype(np.int32)


def cache_meta(
    encoder, hookpoint, *, ctx_len: int, window_len: int, rows: int, top_k: int = 6, sample_size: int = 8, **changes
):
    """The `CacheMeta` of a test cache: `rows` rows of `ctx_len` random tokens through a dictionary
    (`encoder`) at a hookpoint; `changes` sets any other field."""
    from autointerp.cache.store import CacheMeta

    return CacheMeta(
        **{
            "model": "tiny",
            "dictionary": encoder.name,
            "hookpoint": hookpoint.name,
            "corpus": "random",
            "num_latents": encoder.num_latents,
            "ctx_len": ctx_len,
            "window_len": window_len,
            "top_k": top_k,
            "sample_size": sample_size,
            "seed": 0,
            "max_tokens": ctx_len * rows,
            **changes,
        }
    )


def build_tiny_cache(
    folder: Path,
    model,
    *,
    num_latents: int = 32,
    k: int = 3,
    rows: int = 48,
    ctx: int = 64,
    window: int = 8,
    seed: int = 1,
):
    """A finished activation cache of a random SAE over random tokens."""
    from autointerp.cache.build import CacheSettings, build_cache
    from autointerp.cache.store import ActivationCache
    from autointerp.subjects.attach import open_dictionary

    sae = write_sparsify_sae(folder / "sae" / "layers.1", num_latents=num_latents, k=k, seed=seed)
    encoder, hp = open_dictionary(model, str(sae.parent), None)
    meta = cache_meta(encoder, hp, ctx_len=ctx, window_len=window, rows=rows, top_k=40, sample_size=120)
    build_cache(
        folder / "cache",
        token_rows(rows, ctx, seed=3),
        model=model,
        hookpoint=hp,
        encoder=encoder,
        meta=meta,
        settings=CacheSettings(ctx_len=ctx, window_len=window),
        progress=False,
    )
    return ActivationCache(folder / "cache")


def decode_ids(ids):
    return [f" t{i}" for i in ids]
