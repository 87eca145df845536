"""Dictionaries (SAEs, transcoders, plain neurons) behind one `Encoder` interface.

Every format is read without pickle (safetensors, or numpy with allow_pickle=False), validated
against its own config, and turned into the same object: `encode(x) -> dense latent activations`,
and back (`decode`, `decoder_direction`, which steering needs). Errors name the file at fault,
because "size mismatch" with no file name is what users of the peers get.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.errors import AutointerpError
from autointerp.settings import DEFAULT_DICTIONARY_HOOKPOINT
from autointerp.subjects.hookpoints import Side, translate

DEFAULT_DICTIONARY = Path(__file__).resolve().parents[2] / "data" / "sae" / "smollm2-135m-res-topk"
DEFAULT_HOOKPOINT = DEFAULT_DICTIONARY_HOOKPOINT


class DictionaryError(AutointerpError):
    """A dictionary that cannot be used as given; the message names the file or the mismatch."""


@dataclass
class Encoder:
    """Maps activations at a hookpoint to latent activations.

    `kind` is how latents are computed: "topk" | "groupmax" | "relu" | "jumprelu" | "gated" | "neurons".
    Weights are stored [num_latents, d_in] for the encoder, as sparsify does, so `decoder_direction`
    and `encode` cost the same for every format.
    """

    name: str  # provenance: path of the checkpoint, ORG/NAME@COMMIT/PATH for a Hub download, or "neurons"
    format: str  # "sparsify" | "saelens" | "gemma_scope" | "neurons"
    hookpoint: str  # as named by the dictionary or the user
    side: Side  # transcoders read the module input
    d_in: int
    num_latents: int
    kind: str
    W_enc: torch.Tensor | None = None  # [L, d_in]
    b_enc: torch.Tensor | None = None  # [L]
    W_dec: torch.Tensor | None = None  # [L, d_out]
    b_dec: torch.Tensor | None = None  # [d_out]
    pre_bias: torch.Tensor | None = None  # subtracted from the input before encoding
    threshold: torch.Tensor | None = None  # JumpReLU
    k: int | None = None  # TopK, number of groups for groupmax (and the per-token cap for neurons)
    # gated: b_gate, b_mag, r_mag; covariance_whitening: whiten_mean, whiten_matrix
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    normalize: str = "none"  # SAELens input normalisation
    cfg: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] activations -> [..., num_latents] non-negative latent activations (float32)."""
        x = x.float()
        if self.kind == "neurons":
            acts = torch.relu(x)
            if self.k is not None and self.k < acts.shape[-1]:
                acts = _keep_topk(acts, self.k)
            return acts
        x = self._normalize(x)
        if self.pre_bias is not None:
            x = x - self.pre_bias
        assert self.W_enc is not None, f"a {self.kind} dictionary has an encoder"
        pre = x @ self.W_enc.T
        if self.kind == "gated":
            gate = pre + self.extra["b_gate"]
            mag = pre * torch.exp(self.extra["r_mag"]) + self.extra["b_mag"]
            return (gate > 0).float() * torch.relu(mag)
        assert self.b_enc is not None, f"a {self.kind} dictionary has an encoder bias"
        pre = pre + self.b_enc
        if self.kind == "topk":
            assert self.k is not None, "a topk dictionary has its k"
            return _keep_topk(torch.relu(pre), self.k)
        if self.kind == "groupmax":  # sparsify: the max of each of k equal groups of latents
            assert self.k is not None, "a groupmax dictionary has its k"
            acts = torch.relu(pre).unflatten(-1, (self.k, -1))
            values, indices = acts.max(dim=-1, keepdim=True)
            return torch.zeros_like(acts).scatter_(-1, indices, values).flatten(-2)
        if self.kind == "jumprelu":
            assert self.threshold is not None, "a jumprelu dictionary has its thresholds"
            return torch.relu(pre) * (pre > self.threshold)
        return torch.relu(pre)

    def decoder_direction(self, i: int) -> torch.Tensor | None:
        """The direction latent i writes into the model (None for a dictionary with no decoder).

        For an SAE it lives at the hookpoint; for a transcoder at its module's output; for neurons
        (when built with `W_out`) at the output of the layer's down_proj.
        """
        return None if self.W_dec is None else self.W_dec[i]

    @property
    def transcoder(self) -> bool:
        """A transcoder reads its module's input and writes (decodes to) the module's output."""
        return bool(self.cfg.get("transcode", False))

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[..., num_latents] latents -> [..., d] reconstruction of `x`, in the model's own units.

        `x` is the input the latents were encoded from: SAELens's run-time normalisations
        (`constant_norm_rescale`, `layer_norm`) scale the reconstruction back with its statistics, as
        SAELens's own `decode` does. For neurons the dictionary is the neuron basis, so decoding is
        the identity. A transcoder's reconstruction is of its module's *output*, not of `x`.
        """
        z = z.float()
        if self.kind == "neurons":
            return z
        assert self.W_dec is not None, f"a {self.kind} dictionary has a decoder"
        recon = z @ self.W_dec + (self.b_dec if self.b_dec is not None else 0.0)
        x = x.float()
        if self.normalize in ("none", None):
            return recon
        if self.normalize == "constant_norm_rescale":
            return recon * x.norm(dim=-1, keepdim=True) / (self.d_in**0.5)
        if self.normalize == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            return recon * (x - mu).std(-1, keepdim=True) + mu
        if self.normalize == "expected_average_only_in" and "norm_scaling_factor" in self.cfg:
            return recon / float(self.cfg["norm_scaling_factor"])
        if self.normalize == "covariance_whitening" and "whiten_matrix" in self.extra:
            if "unwhiten_matrix" not in self.extra:
                self.extra["unwhiten_matrix"] = torch.linalg.inv(self.extra["whiten_matrix"])
            return recon @ self.extra["unwhiten_matrix"] + self.extra["whiten_mean"]
        raise DictionaryError(f"{self.name}: input normalisation {self.normalize!r} is not supported")

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize in ("none", None):
            return x
        if self.normalize == "constant_norm_rescale":
            return x * (self.d_in**0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        if self.normalize == "layer_norm":  # exactly SAELens's: unbiased std, eps added to the std
            x = x - x.mean(-1, keepdim=True)
            return x / (x.std(-1, keepdim=True) + 1e-5)
        # These two are applied by SAELens's training activation store, outside the SAE, and folded
        # into the weights when training ends; an unfolded checkpoint keeps them beside its weights.
        if self.normalize == "expected_average_only_in" and "norm_scaling_factor" in self.cfg:
            return x * float(self.cfg["norm_scaling_factor"])
        if self.normalize == "covariance_whitening" and "whiten_matrix" in self.extra:
            return (x - self.extra["whiten_mean"]) @ self.extra["whiten_matrix"]
        raise DictionaryError(f"{self.name}: input normalisation {self.normalize!r} is not supported")

    def to(self, device: torch.device | str) -> Encoder:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "pre_bias", "threshold"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        self.extra = {k: v.to(device) for k, v in self.extra.items()}
        return self


def _keep_topk(acts: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = acts.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(acts).scatter_(-1, indices, values)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DictionaryError(f"missing dictionary config: {path}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DictionaryError(f"corrupt dictionary config {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise DictionaryError(f"corrupt dictionary config {path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DictionaryError(f"missing dictionary weights: {path}")
    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DictionaryError(f"corrupt dictionary weights {path}: {e}") from None


def _need(tensors: dict[str, torch.Tensor], path: Path, *names: str) -> list[torch.Tensor]:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DictionaryError(f"{path} lacks tensor(s) {missing}; it has {sorted(tensors)}")
    return [tensors[n] for n in names]


def _check_shape(t: torch.Tensor, shape: tuple[int, ...], what: str, path: Path) -> None:
    if tuple(t.shape) != shape:
        raise DictionaryError(f"{path}: {what} has shape {tuple(t.shape)}, expected {shape} from its config")


def load_sparsify(folder: Path, hookpoint: str | None = None) -> Encoder:
    """A sparsify (EleutherAI) checkpoint: a run folder of `<hookpoint>/cfg.json + sae.safetensors`,
    or one hookpoint folder directly."""
    if not (folder / "cfg.json").is_file():
        available = sorted(p.parent.name for p in folder.glob("*/cfg.json"))
        if not available:
            raise DictionaryError(f"{folder} holds no sparsify checkpoint (no cfg.json in it or its subfolders)")
        if hookpoint is None:
            if len(available) > 1:
                raise DictionaryError(f"{folder} has several hookpoints, pick one with --hookpoint: {available}")
            hookpoint = available[0]
        if not (folder / hookpoint / "cfg.json").is_file():
            raise DictionaryError(f"{folder} has no hookpoint {hookpoint!r}; it has {available}")
        folder = folder / hookpoint
    hookpoint = hookpoint or folder.name
    cfg = _read_json(folder / "cfg.json")
    weights = folder / "sae.safetensors"
    tensors = _read_tensors(weights)
    W_enc, b_enc, W_dec = _need(tensors, weights, "encoder.weight", "encoder.bias", "W_dec")
    num_latents, d_in = W_enc.shape
    if cfg.get("d_in") not in (None, d_in):
        raise DictionaryError(f"{weights}: encoder.weight has d_in {d_in} but cfg.json says {cfg['d_in']}")
    expected_latents = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 0))
    if expected_latents and expected_latents != num_latents:
        raise DictionaryError(
            f"{weights}: {num_latents} latents in encoder.weight, cfg.json implies {expected_latents}"
        )
    _check_shape(b_enc, (num_latents,), "encoder.bias", weights)
    if W_dec.shape[0] != num_latents:
        raise DictionaryError(f"{weights}: W_dec has shape {tuple(W_dec.shape)}, expected [{num_latents}, d_out]")
    b_dec = tensors.get("b_dec")
    transcode = bool(cfg.get("transcode", False))
    activation = cfg.get("activation", "topk")
    k = int(cfg.get("k", 32))  # sparsify's SparseCoderConfig default
    if activation not in ("topk", "groupmax"):
        raise DictionaryError(f"{folder / 'cfg.json'}: activation {activation!r} is not supported (topk, groupmax)")
    if not 0 < k <= num_latents or (activation == "groupmax" and num_latents % k):
        raise DictionaryError(f"{folder / 'cfg.json'}: k={k} does not fit {num_latents} latents ({activation})")
    return Encoder(
        name=str(folder),
        format="sparsify",
        hookpoint=hookpoint,
        # a transcoder reads its module's input; otherwise the name says (module paths: the output)
        side="input" if transcode else translate(hookpoint)[1],
        d_in=d_in,
        num_latents=num_latents,
        kind=activation,
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        pre_bias=None if transcode else b_dec,
        k=k,
        cfg=cfg,
    )


def load_saelens(folder: Path, hookpoint: str | None = None, cfg_overrides: dict[str, Any] | None = None) -> Encoder:
    """A SAELens (v6, and older configs) folder: `cfg.json + sae_weights.safetensors`.

    Reads what `SAE.save_model` writes for inference SAEs and for training checkpoints alike, and
    encodes as SAELens's `encode` does (see tests/subjects/test_dictionaries.py, which checks it against the
    library).
    """
    cfg_path = folder / "cfg.json"
    cfg = {**_read_json(cfg_path), **(cfg_overrides or {})}
    weights = folder / "sae_weights.safetensors"
    tensors = _read_tensors(weights)
    W_enc, W_dec, b_dec = _need(tensors, weights, "W_enc", "W_dec", "b_dec")
    d_in, num_latents = W_enc.shape
    if cfg.get("d_in") not in (None, d_in) or cfg.get("d_sae") not in (None, num_latents):
        raise DictionaryError(
            f"{weights}: W_enc is {tuple(W_enc.shape)} but cfg.json says d_in={cfg.get('d_in')}, "
            f"d_sae={cfg.get('d_sae')}"
        )
    _check_shape(W_dec, (num_latents, W_dec.shape[1]), "W_dec", weights)
    meta = cfg.get("metadata") or {}
    hook_name = hookpoint or meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook_name:
        raise DictionaryError(f"{cfg_path} names no hook (metadata.hook_name); pass --hookpoint")
    arch = cfg.get("architecture", "standard")
    if arch == "standard" and cfg.get("activation_fn_str", cfg.get("activation_fn", "relu")) == "topk":
        arch = "topk"
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch == "batchtopk":
        # A BatchTopK training checkpoint: SAELens's inference form of it is a JumpReLU SAE whose
        # threshold is the running `topk_threshold` (what `save_inference_model` writes).
        if "threshold" not in tensors:
            (topk_threshold,) = _need(tensors, weights, "topk_threshold")
            tensors["threshold"] = topk_threshold.reshape(()).expand(num_latents).clone()
        arch = "jumprelu"
    kinds = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
    if arch not in kinds:
        raise DictionaryError(f"{cfg_path}: architecture {arch!r} is not supported; know {list(kinds)} and batchtopk")
    if arch == "topk" and not (k and 0 < int(k) <= num_latents):
        raise DictionaryError(f"{cfg_path}: a topk SAE needs 0 < k <= d_sae={num_latents}, got k={k}")
    extra: dict[str, torch.Tensor] = {}
    b_enc = tensors.get("b_enc")
    if arch == "gated":
        names = ("b_gate", "b_mag", "r_mag")
        extra = dict(zip(names, _need(tensors, weights, *names), strict=True))
    else:
        (b_enc,) = _need(tensors, weights, "b_enc")
        _check_shape(b_enc, (num_latents,), "b_enc", weights)
    threshold = _need(tensors, weights, "threshold")[0] if arch == "jumprelu" else None
    W_enc = W_enc.T.contiguous()
    if cfg.get("rescale_acts_by_decoder_norm") and cfg.get("architecture") in ("topk", "batchtopk"):
        # TopK SAEs scale pre-activations by the decoder norms (default for SAELens's TopK training);
        # fold the norms in as SAELens does when it saves the inference SAE.
        norms = W_dec.norm(dim=-1).clamp(min=1e-8)
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    normalize = cfg.get("normalize_activations") or "none"
    if isinstance(normalize, bool):  # pre-6 configs: True meant expected_average_only_in
        normalize = "expected_average_only_in" if normalize else "none"
    if normalize == "expected_average_only_in" and "norm_scaling_factor" not in cfg:
        scaler = folder / "activation_scaler.json"  # written beside a training checkpoint
        factor = _read_json(scaler).get("scaling_factor") if scaler.is_file() else None
        if factor is None:
            raise DictionaryError(
                f"{cfg_path}: normalize_activations is expected_average_only_in but no scaling factor is "
                f"stored (no {scaler.name} with a scaling_factor); fold it into the weights with SAELens "
                "(sae.fold_activation_norm_scaling_factor) and save again"
            )
        cfg = {**cfg, "norm_scaling_factor": float(factor)}
    if normalize == "covariance_whitening":
        whitening = folder / "activation_whitening.safetensors"
        if not whitening.is_file():
            raise DictionaryError(
                f"{cfg_path}: normalize_activations is covariance_whitening but {whitening} is missing; fold "
                "it into the weights with SAELens (sae.fold_activation_whitening) and save again"
            )
        mean, matrix = _need(_read_tensors(whitening), whitening, "mean", "matrix")
        extra.update(whiten_mean=mean, whiten_matrix=matrix)
    known = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in", "covariance_whitening")
    if normalize not in known:
        raise DictionaryError(f"{cfg_path}: normalize_activations {normalize!r} is not supported; know {known}")
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))  # SAELens's default, in 6 and before
    return Encoder(
        name=str(folder),
        format="saelens",
        hookpoint=hook_name,
        side=translate(hook_name)[1],
        d_in=d_in,
        num_latents=num_latents,
        kind=kinds[arch],
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        pre_bias=b_dec if apply_b_dec else None,
        threshold=threshold,
        k=int(k) if k else None,
        extra=extra,
        normalize=normalize,
        cfg=cfg,
    )


GEMMA_SCOPE_FILE = "params.npz"


def gemma_scope_hookpoint(where: str) -> str | None:
    """The hookpoint a Gemma Scope SAE reads, from where it lives, or None when that does not say.

    Gemma Scope names its SAEs `<repo>/layer_N/width_W/average_l0_K/params.npz`, and its repos by
    site (`gemma-scope-2b-pt-res`, `-mlp`, `-att`). Only the residual stream is mapped here: a `-res`
    SAE of layer N reads the output of block N (`blocks.N.hook_resid_post`). The MLP-output SAEs read
    Gemma 2's post-MLP norm and the attention SAEs the heads before `o_proj`, which no name of ours
    says without knowing the model, so for those the user names the hookpoint.
    """
    layer = re.search(r"(?:^|/)layer_(\d+)(?:/|$)", where)
    residual = re.search(r"-res(?:-[^/]*)?(?:/|$)", where)
    return f"layers.{layer.group(1)}" if layer and residual else None


def load_gemma_scope(path: Path, hookpoint: str | None = None, *, where: str | None = None) -> Encoder:
    """A Gemma Scope JumpReLU SAE: one `params.npz` with W_enc [d_in, L], W_dec [L, d_in], b_enc,
    b_dec and threshold, read with `allow_pickle=False` (an .npz can hold pickled objects).

    Gemma Scope encodes the raw activation (no b_dec subtracted first) and keeps a latent only where
    its pre-activation exceeds its threshold. `where` is the name the hookpoint is inferred from when
    none is given (the Hub path for a download; the file path otherwise).
    """
    file = path / GEMMA_SCOPE_FILE if path.is_dir() else path
    if not file.is_file():
        raise DictionaryError(f"missing dictionary weights: {file}")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except ValueError as e:  # object arrays need pickle: refused
        raise DictionaryError(f"{file} holds arrays that only pickle can read; refused ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DictionaryError(f"corrupt dictionary weights {file}: {e}") from None
    # some exports spell the matrices w_enc / w_dec
    tensors = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(v).float() for k, v in arrays.items()}
    W_enc, W_dec, b_enc, b_dec, threshold = _need(tensors, file, "W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    if W_enc.dim() != 2:
        raise DictionaryError(f"{file}: W_enc has shape {tuple(W_enc.shape)}, expected [d_in, num_latents]")
    d_in, num_latents = W_enc.shape
    _check_shape(W_dec, (num_latents, d_in), "W_dec", file)
    _check_shape(b_enc, (num_latents,), "b_enc", file)
    _check_shape(b_dec, (d_in,), "b_dec", file)
    _check_shape(threshold, (num_latents,), "threshold", file)
    scaling = tensors.get("scaling_factor")
    if scaling is not None and not torch.allclose(scaling, torch.ones_like(scaling)):
        raise DictionaryError(f"{file}: a scaling_factor other than 1 (a fine-tuned Gemma Scope SAE) is not supported")
    hookpoint = hookpoint or gemma_scope_hookpoint(where or file.as_posix())
    if hookpoint is None:
        raise DictionaryError(
            f"cannot tell which hookpoint {where or file} reads (only Gemma Scope residual-stream SAEs, "
            ".../gemma-scope-*-res/layer_N/..., are recognised by their path): pass --hookpoint"
        )
    return Encoder(
        name=str(file.parent),
        format="gemma_scope",
        hookpoint=hookpoint,
        side=translate(hookpoint)[1],
        d_in=d_in,
        num_latents=num_latents,
        kind="jumprelu",
        W_enc=W_enc.T.contiguous(),
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        threshold=threshold,
    )


def neurons(hookpoint: str, d_in: int, *, k: int = 32, W_out: torch.Tensor | None = None) -> Encoder:
    """The MLP neurons of a layer as the dictionary: identity encoder, positive part, top-k per token.

    Keeping only the k strongest neurons per token makes "fires" meaningful for dense activations and
    keeps the cache sparse; `W_out` (down_proj weight, [d_model, d_mlp]) gives decoder directions.
    """
    return Encoder(
        name="neurons",
        format="neurons",
        hookpoint=hookpoint,
        side="input",
        d_in=d_in,
        num_latents=d_in,
        kind="neurons",
        W_dec=None if W_out is None else W_out.T.float().contiguous(),
        k=k,
    )


def neuron_hookpoint(name: str) -> str:
    """`layers.N`, `layers.N.mlp` or `blocks.N.mlp.hook_post` -> the input of that layer's down_proj."""
    import re

    m = re.fullmatch(r"(?:model\.)?(?:layers|blocks)\.(\d+)(?:\.mlp(?:\.down_proj|\.hook_post)?)?", name)
    if not m:
        raise DictionaryError(f"neurons need a layer: --hookpoint layers.N (or layers.N.mlp), got {name!r}")
    return f"layers.{m.group(1)}.mlp.down_proj"


@dataclass(frozen=True)
class Held:
    """One dictionary found at a local path: the hookpoint it reads (None when its files do not say) and
    the folder (or file) `load_dictionary` opens for it."""

    hookpoint: str | None
    path: Path


def held_dictionaries(path: Path) -> tuple[bool, list[Held]]:
    """What a local dictionary location holds, without reading weights: (whether it is one dictionary,
    the dictionaries with their hookpoints). A location is one dictionary (a SAELens folder, a sparsify
    hookpoint folder, a Gemma Scope params.npz) or a folder of them: a sparsify run (one subfolder per
    hookpoint, named by it), or a folder whose subfolders are SAELens or Gemma Scope dictionaries, each
    reading the hook its config names (Gemma Scope: its `layer_N` path). Nothing recognised: (False, [])."""
    path = Path(path)
    if not path.exists():
        return False, []
    one = _held_one(path)
    if one is not None:
        return True, [one]
    if not path.is_dir():
        return False, []
    found = [held for child in sorted(p for p in path.iterdir() if p.is_dir()) if (held := _held_one(child))]
    return False, found


def _held_one(path: Path) -> Held | None:
    if path.suffix == ".npz" or (path.is_dir() and (path / GEMMA_SCOPE_FILE).is_file()):
        return Held(gemma_scope_hookpoint(path.resolve().as_posix()), path)
    if not path.is_dir():
        return None
    if (path / "sae_weights.safetensors").is_file():
        try:
            cfg = json.loads((path / "cfg.json").read_text())
        except (OSError, ValueError):
            return Held(None, path)  # the loader says what is wrong with it
        meta = cfg.get("metadata") if isinstance(cfg, dict) else None
        hook = (meta or {}).get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
        return Held(str(hook) if hook else None, path)
    if (path / "cfg.json").is_file():  # sparsify, named by its folder (missing weights: the loader says so)
        return Held(path.name, path)
    return None


def peek_num_latents(dictionary: str | Path, hookpoint: str | None = None) -> int | None:
    """A sparsify or SAELens checkpoint's number of latents, from its safetensors header alone: no
    weights read and no model loaded, so options that name latents are checked before minutes of
    work. None when it cannot be told this way (neurons, a Gemma Scope params.npz, a name to fetch from
    the Hub, an unusual layout, a broken file): the full loader then finds the number, or says what is
    wrong."""
    from safetensors import safe_open

    if str(dictionary) == "neurons":
        return None
    if str(dictionary) == "default":
        folder, hookpoint = DEFAULT_DICTIONARY, hookpoint or DEFAULT_HOOKPOINT
    else:
        folder = Path(dictionary)
        folder = folder.parent if folder.is_file() else folder
    if (folder / "sae_weights.safetensors").is_file():
        weights, tensor, axis = folder / "sae_weights.safetensors", "W_enc", 1  # SAELens: [d_in, d_sae]
    else:
        candidates = [folder / "sae.safetensors"] if (folder / "cfg.json").is_file() else []
        if not candidates and hookpoint:
            candidates = [folder / hookpoint / "sae.safetensors"]
        if not candidates:
            candidates = sorted(folder.glob("*/sae.safetensors"))
        if len(candidates) != 1:
            return None
        weights, tensor, axis = candidates[0], "encoder.weight", 0  # sparsify: [num_latents, d_in]
    try:
        with safe_open(str(weights), framework="pt") as f:
            shape = f.get_slice(tensor).get_shape()
        return int(shape[axis])
    except Exception:  # noqa: BLE001 - any problem is the full loader's to report
        return None


def load_dictionary(
    path: str | Path, hookpoint: str | None = None, cfg_overrides: dict[str, Any] | None = None
) -> Encoder:
    """Load any supported dictionary; the format is recognised from the files present.

    `cfg_overrides` replaces keys of a SAELens cfg.json (a SAELens release can set some, e.g. its
    input normalisation, outside the checkpoint)."""
    if str(path) == "neurons":
        raise DictionaryError("neurons are built from the subject model: use subjects.attach.open_dictionary")
    folder = Path(path)
    if not folder.exists():
        raise DictionaryError(f"dictionary not found: {folder}")
    if folder.suffix == ".npz" or (folder / GEMMA_SCOPE_FILE).is_file():
        return load_gemma_scope(folder, hookpoint)
    if folder.is_file():
        folder = folder.parent
    if (folder / "sae_weights.safetensors").exists():
        return load_saelens(folder, hookpoint, cfg_overrides)
    if (folder / "sae.safetensors").exists() or any(folder.glob("*/sae.safetensors")) or any(folder.glob("*/cfg.json")):
        return load_sparsify(folder, hookpoint)
    if (folder / "cfg.json").exists():
        raise DictionaryError(
            f"{folder} has cfg.json but neither sae.safetensors (sparsify) nor sae_weights.safetensors (SAELens)"
        )
    raise DictionaryError(
        f"{folder} is not a dictionary: expected a sparsify folder (cfg.json + "
        "sae.safetensors, or one subfolder per hookpoint) or a SAELens folder "
        "(cfg.json + sae_weights.safetensors) or a Gemma Scope params.npz"
    )
