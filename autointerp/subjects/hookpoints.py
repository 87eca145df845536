"""Naming and reading a place in the subject model ("hookpoint").

Dictionaries name their hookpoint in one of two dialects: sparsify's module paths under the base
model (`layers.10`, `layers.10.mlp`) and TransformerLens names used by SAELens
(`blocks.10.hook_resid_post`). Both are mapped to one (module path, side) pair so the rest of the
code never sees the dialect.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

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
    """Raised by the capture hook: nothing after the hookpoints needs computing."""


@torch.inference_mode()
def capture(
    model: nn.Module, hookpoint: Hookpoint, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the model up to `hookpoint` and return the activations there, [batch, seq, d].

    The forward pass is cut short right after the hookpoint, which is most of the speed of caching
    an early layer.
    """
    return capture_many(model, [hookpoint], input_ids, attention_mask)[0]


@torch.inference_mode()
def capture_many(
    model: nn.Module,
    hookpoints: Sequence[Hookpoint],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """One forward pass that reads every hookpoint; the activations at each, [batch, seq, d], in order.

    The pass stops as soon as the last of them has been read, whichever block that is: nothing after
    the deepest hookpoint is computed. Two names for one place (`layers.4`, `blocks.4.hook_resid_post`)
    share one hook.
    """
    places = list(dict.fromkeys((hp.module_path, hp.side) for hp in hookpoints))
    captured: dict[tuple[str, Side], torch.Tensor] = {}
    handles = []

    def grab(place: tuple[str, Side], tensor_or_tuple: Any) -> None:
        if place in captured:  # a module run twice in one pass: its first call is the hookpoint
            return
        captured[place] = tensor_or_tuple[0] if isinstance(tensor_or_tuple, tuple) else tensor_or_tuple
        if len(captured) == len(places):
            raise _StopForward

    base = base_model(model)
    try:
        for place in places:
            module = base.get_submodule(place[0])
            if place[1] == "output":
                handles.append(module.register_forward_hook(lambda _m, _inp, out, p=place: grab(p, out)))
            else:
                handles.append(module.register_forward_pre_hook(lambda _m, inp, p=place: grab(p, inp)))
        base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [hp.name for hp in hookpoints if (hp.module_path, hp.side) not in captured]
    if missing:
        raise RuntimeError(f"hookpoint(s) {missing} never reached in the forward pass")
    return [captured[(hp.module_path, hp.side)] for hp in hookpoints]


def width(model: nn.Module, hookpoint: Hookpoint) -> int:
    """The activation width at a hookpoint, measured by running two tokens through the model."""
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2]], device=device)
    return int(capture(model, hookpoint, ids).shape[-1])
