"""Naming and reading a place in the subject model ("hookpoint").

Dictionaries name their hookpoint in one of two dialects: sparsify's module paths under the base
model (`layers.10`, `layers.10.mlp`) and TransformerLens names used by SAELens
(`blocks.10.hook_resid_post`). Both are mapped to one (module path, side) pair so the rest of the
code never sees the dialect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import nn

from autointerp.errors import AutointerpError

Side = Literal["output", "input"]

# TransformerLens hook name -> (module path under the base model, which side of it).
_TL_PATTERNS: list[tuple[str, str, Side]] = [
    (r"blocks\.(\d+)\.hook_resid_post", "layers.{}", "output"),
    (r"blocks\.(\d+)\.hook_resid_pre", "layers.{}", "input"),
    (r"blocks\.(\d+)\.hook_resid_mid", "layers.{}.post_attention_layernorm", "input"),
    (r"blocks\.(\d+)\.hook_mlp_out", "layers.{}.mlp", "output"),
    # TransformerLens's hook_mlp_in is resid_mid *before* ln2 (HF's mlp input is after the norm).
    (r"blocks\.(\d+)\.hook_mlp_in", "layers.{}.post_attention_layernorm", "input"),
    (r"blocks\.(\d+)\.hook_attn_out", "layers.{}.self_attn", "output"),
    (r"blocks\.(\d+)\.mlp\.hook_post", "layers.{}.mlp.down_proj", "input"),
]


class HookpointError(AutointerpError):
    """A hookpoint that does not exist in the subject model; the message lists the valid ones."""


@dataclass(frozen=True)
class Hookpoint:
    name: str  # as the user or the dictionary wrote it
    module_path: str  # under the base model, e.g. "layers.10"
    side: Side  # read the module's output (residual stream after a block) or its input


def base_model(model: nn.Module) -> nn.Module:
    """The decoder stack under a CausalLM head (`model.model` for Llama-like models)."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "layers"):
        return inner
    return getattr(model, "base_model", model)


def n_layers(model: nn.Module) -> int:
    return len(cast(nn.ModuleList, base_model(model).layers))


def valid_hookpoints_text(model: nn.Module) -> str:
    n = n_layers(model)
    return (
        f"valid hookpoints: layers.0 … layers.{n - 1} (residual stream after that block), "
        f"layers.N.mlp, layers.N.self_attn (their outputs), layers.N.mlp.down_proj (its input: the MLP "
        f"neurons), or TransformerLens names blocks.N.hook_resid_post|hook_resid_pre|hook_resid_mid|"
        f"hook_mlp_out|hook_mlp_in|hook_attn_out, blocks.N.mlp.hook_post (N from 0 to {n - 1})"
    )


def translate(name: str) -> tuple[str, Side]:
    """(module path, side) a hookpoint name stands for, without a model: TransformerLens names map to
    their HF module and side; module paths (`layers.10`, `layers.10.mlp`) mean that module's output."""
    for pattern, template, tl_side in _TL_PATTERNS:
        m = re.fullmatch(pattern, name)
        if m:
            return template.format(m.group(1)), tl_side
    return name.removeprefix("model.").removeprefix("base_model."), "output"


def resolve(model: nn.Module, name: str, side: Side | None = None) -> Hookpoint:
    """Map a hookpoint name in either dialect to a module of this model, or fail listing valid names."""
    module_path, default_side = translate(name)
    try:
        base_model(model).get_submodule(module_path)
    except AttributeError:
        raise HookpointError(f"hookpoint {name!r} is not in this model; {valid_hookpoints_text(model)}") from None
    return Hookpoint(name=name, module_path=module_path, side=side or default_side)


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the hookpoint needs computing."""


@torch.inference_mode()
def capture(
    model: nn.Module, hookpoint: Hookpoint, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the model up to `hookpoint` and return the activations there, [batch, seq, d].

    The forward pass is cut short right after the hookpoint, which is most of the speed of caching
    an early layer.
    """
    module = base_model(model).get_submodule(hookpoint.module_path)
    captured: list[torch.Tensor] = []

    def grab(tensor_or_tuple):
        t = tensor_or_tuple[0] if isinstance(tensor_or_tuple, tuple) else tensor_or_tuple
        captured.append(t)
        raise _StopForward

    if hookpoint.side == "output":
        handle = module.register_forward_hook(lambda _m, _inp, out: grab(out))
    else:
        handle = module.register_forward_pre_hook(lambda _m, inp: grab(inp))
    try:
        base_model(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"hookpoint {hookpoint.name!r} was never reached in the forward pass")
    return captured[0]


def width(model: nn.Module, hookpoint: Hookpoint) -> int:
    """The activation width at a hookpoint, measured by running two tokens through the model."""
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2]], device=device)
    return int(capture(model, hookpoint, ids).shape[-1])
