"""Subject models and dictionaries handed in as Python objects, as delphi and SAEBench users hold them:
`autointerp.Run(out, model=(model, tokenizer), dictionary=sae, hookpoint=...)`.

Each object is registered under a name that says what it is (`python:LlamaForCausalLM:NAME_OR_PATH`,
`python:saelens:TopKSAE:HOOK`), and the name stands in the run's config where a path or Hub id would:
config.json says which class was used, and a later stage of this process finds the object again by it.
No other process can rebuild an object from its name, so a folder cached from objects is resumed by
handing the same objects again (a command line or a Ray worker is told so).

A SAELens SAE or a sparsify SparseCoder is written once, by its own library's save method, to a folder
that lives as long as the process, and read from there by the loaders every checkpoint on disk goes
through: its cfg (prepend_bos, context_size, input normalisation...) is honoured or refused exactly as
a saved copy's would be, and it encodes to the same activations. Any other module with `encode()` is
called as it is, and must be told its hookpoint.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autointerp.subjects.dictionaries import DictionaryError, Encoder
from autointerp.subjects.hookpoints import translate
from autointerp.subjects.model import ModelError, Subject
from autointerp.subjects.sources import DictionarySource

PREFIX = "python:"
_subjects: dict[str, Subject] = {}
_dictionaries: dict[str, DictionarySource] = {}
_modules: dict[Path, Any] = {}  # a plain module's stand-in folder -> the module
_root: Path | None = None


def is_in_memory(name: str | None) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


def _folder(name: str) -> Path:
    """A fresh folder for one object, under a temporary root removed when the process ends."""
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="autointerp-objects-"))
        atexit.register(shutil.rmtree, _root, ignore_errors=True)
    folder = _root / str(len(list(_root.iterdir())))
    folder.mkdir()
    (folder / "NAME").write_text(name)
    return folder


def _gone(what: str, name: str) -> str:
    return (
        f"this run's {what} was handed in from Python ({name}); no other process or command can rebuild it: "
        f"resume the folder with autointerp.Run(..., {what}=<the same object>)"
    )


# ---------------------------------------------------------------- subject models


def register_model(model: Any, tokenizer: Any) -> str:
    """The name a transformers causal LM (with its tokenizer) goes by in a run's config."""
    if tokenizer is None:
        raise ModelError("a model object needs its tokenizer: model=(model, tokenizer), or tokenizer=...")
    if not callable(tokenizer) or not hasattr(tokenizer, "decode"):
        raise ModelError(f"tokenizer must be a transformers tokenizer, not {type(tokenizer).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model must be a transformers model (a torch module), not {type(model).__name__}")
    origin = getattr(getattr(model, "config", None), "_name_or_path", "") or "unnamed"
    name = f"{PREFIX}{type(model).__name__}:{origin}"
    _subjects[name] = Subject(model=model.eval(), tokenizer=tokenizer, name=name)
    return name


def held_subject(name: str) -> Subject:
    """The subject registered under `name` in this process."""
    if name not in _subjects:
        raise ModelError(_gone("model", name))
    return _subjects[name]


def model_dtype(model: Any) -> str | None:
    """The run config's name of the model's dtype (None: one the config cannot name)."""
    dtype = next((p.dtype for p in model.parameters()), None)
    names = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
    return names.get(dtype) if dtype is not None else None


def model_device(model: Any) -> str:
    return str(next((p.device for p in model.parameters()), "cpu"))


# ---------------------------------------------------------------- dictionaries


@dataclass(frozen=True)
class _Saver:
    library: str  # what the name says: saelens, sparsify
    save: Callable[[Any, Path], Any]


def _saver(obj: Any) -> _Saver | None:
    module = type(obj).__module__
    if module.startswith("sae_lens") and hasattr(obj, "save_model") and hasattr(obj, "cfg"):
        return _Saver("saelens", lambda o, path: o.save_model(path))
    if module.startswith("sparsify") and hasattr(obj, "save_to_disk"):
        return _Saver("sparsify", lambda o, path: o.save_to_disk(path))
    return None


def register_dictionary(obj: Any, hookpoint: str | None) -> str:
    """The name a dictionary object goes by in a run's config: a SAELens SAE, a sparsify SparseCoder, or any
    torch module with `encode(activations) -> latents`."""
    saver = _saver(obj)
    if saver is not None:
        hook = hookpoint or _saelens_hook(obj)
        if not hook:
            raise DictionaryError(f"a {type(obj).__name__} object names no hookpoint: pass hookpoint=...")
        name = f"{PREFIX}{saver.library}:{type(obj).__name__}:{hook}"
        folder = _folder(name)
        saver.save(obj, folder)
    elif callable(getattr(obj, "encode", None)):
        if not hookpoint:
            raise DictionaryError(f"a {type(obj).__name__} dictionary object needs hookpoint=... (where it reads)")
        name = f"{PREFIX}module:{type(obj).__name__}:{hookpoint}"
        folder = _folder(name)
        _modules[folder] = obj
    else:
        raise DictionaryError(
            f"dictionary must be a path, a Hub id, a sae_lens SAE, a sparsify SparseCoder or a module with "
            f"encode(), not {type(obj).__name__}"
        )
    _dictionaries[name] = DictionarySource(folder, hookpoint, name=name)
    return name


def _saelens_hook(obj: Any) -> str | None:
    cfg = getattr(obj, "cfg", None)
    meta = getattr(cfg, "metadata", None)
    return getattr(meta, "hook_name", None) or getattr(cfg, "hook_name", None)


def held_dictionary(name: str, hookpoints: list[str] | None) -> list[DictionarySource]:
    """The source registered under `name` in this process (an object reads the one hookpoint it was given)."""
    if name not in _dictionaries:
        raise DictionaryError(_gone("dictionary", name))
    source = _dictionaries[name]
    if hookpoints and len(hookpoints) > 1:
        raise DictionaryError(f"a dictionary object reads one hookpoint, not {len(hookpoints)}: {hookpoints}")
    if hookpoints and source.hookpoint and hookpoints[0] != source.hookpoint:
        raise DictionaryError(f"the dictionary object was registered at {source.hookpoint}, not {hookpoints[0]}")
    return [source if not hookpoints else DictionarySource(source.path, hookpoints[0], name=name)]


def holds_module(path: Path) -> bool:
    """Whether `path` stands for a plain module with `encode()` (which has no files to load)."""
    return Path(path) in _modules


def module_encoder(path: Path, hookpoint: str, d_in: int) -> Encoder:
    """The encoder of the plain module registered at `path`, reading `d_in`-wide activations."""
    module = _modules[Path(path)]
    name = (Path(path) / "NAME").read_text()
    with torch.inference_mode():
        probe = module.encode(torch.zeros(1, d_in, dtype=_dtype(module)))
    return ModuleEncoder(
        name=name,
        format="module",
        hookpoint=hookpoint,
        side=translate(hookpoint)[1],
        d_in=d_in,
        num_latents=int(probe.shape[-1]),
        kind="module",
        cfg={"class": f"{type(module).__module__}.{type(module).__qualname__}"},
        module=module,
    )


def _dtype(module: Any) -> torch.dtype:
    return (
        next((p.dtype for p in module.parameters()), torch.float32) if hasattr(module, "parameters") else torch.float32
    )


@dataclass
class ModuleEncoder(Encoder):
    """A module's own `encode`, behind the `Encoder` interface (its decoder rows, when it has a `W_dec` of
    one row per latent, are the directions steering pushes)."""

    module: Any = None

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.encode(x.to(_dtype(self.module))).float()

    def decoder_direction(self, i: int) -> torch.Tensor | None:
        w = getattr(self.module, "W_dec", None)
        if isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[0] == self.num_latents:
            return w[i].detach().float()
        return None

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        decode = getattr(self.module, "decode", None)
        if decode is None:
            raise DictionaryError(f"{self.name} has no decode(): it cannot be steered by encode-decode")
        return decode(z.to(_dtype(self.module))).float()

    def to(self, device: torch.device | str) -> Encoder:
        self.module.to(device)
        return self
