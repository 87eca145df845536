"""The shared embedder: lazy loading, a per-text cache, normalised vectors, clear errors for bad models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.fake_embedder import bag_of_words

from autointerp.embeddings import BUNDLED_NAME, CachedEmbedder, EmbeddingError, load_embedder, resolve_model


def _counting():
    calls: list[list[str]] = []
    loads = []

    def load():
        loads.append(1)

        def encode(texts):
            calls.append(list(texts))
            return bag_of_words(texts) * 3.0  # unnormalised on purpose

        return encode

    return load, loads, calls


def test_model_loads_on_first_encode_only_and_each_text_is_encoded_once():
    load, loads, calls = _counting()
    emb = CachedEmbedder("fake", load, batch_size=2)
    assert not loads
    a = emb.encode(["one two", "two three", "one two", "four"])
    assert len(loads) == 1 and a.shape == (4, bag_of_words(["x"]).shape[1])
    assert [len(c) for c in calls] == [2, 1]  # 3 distinct texts, batches of 2
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(a[0], a[2])
    b = emb.encode(["four", "one two", "five"])
    assert len(loads) == 1 and calls[-1] == ["five"] and emb.encoded == 4
    np.testing.assert_array_equal(b[0], a[3])


def test_cache_is_bounded_least_recently_used_first():
    load, _, calls = _counting()
    emb = CachedEmbedder("fake", load, max_cached=2)
    emb.encode(["a"])
    emb.encode(["b"])
    emb.encode(["a"])  # a is now the most recent
    emb.encode(["c"])  # evicts b
    emb.encode(["a", "c"])
    assert emb.encoded == 3
    emb.encode(["b"])
    assert emb.encoded == 4


def test_default_is_the_bundled_minilm():
    path, name = resolve_model("default")
    assert name == BUNDLED_NAME
    assert (Path(path) / "modules.json").is_file()
    assert resolve_model("all-MiniLM-L6-v2") == (path, name)


def test_bad_models_fail_at_once_and_say_what_works(tmp_path):
    with pytest.raises(EmbeddingError, match="does not exist.*'default'"):
        load_embedder(str(tmp_path / "no-such-folder"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(EmbeddingError, match="is a file"):
        load_embedder(str(tmp_path / "file.bin"))
    with pytest.raises(EmbeddingError, match="neither a folder nor in the local Hugging Face cache"):
        load_embedder("no-such-org/no-such-embedding-model")
