"""Opening a dictionary against a subject model, checking that the two fit together."""

from __future__ import annotations

from torch import nn

from autointerp.subjects.dictionaries import (
    DEFAULT_DICTIONARY,
    DEFAULT_HOOKPOINT,
    DictionaryError,
    Encoder,
    load_dictionary,
    neuron_hookpoint,
    neurons,
)
from autointerp.subjects.hookpoints import Hookpoint, base_model, resolve, width


def open_dictionary(
    model: nn.Module, dictionary: str, hookpoint: str | None = None, *, neurons_k: int = 32
) -> tuple[Encoder, Hookpoint]:
    """The encoder and the hookpoint it reads, validated against the model.

    `dictionary` is "default" (the SAE shipped in data/), "neurons" (the MLP neurons of the layer
    named by `hookpoint`), or a path to a sparsify or SAELens checkpoint.
    """
    if dictionary == "neurons":
        if not hookpoint:
            raise DictionaryError("--dictionary neurons needs --hookpoint layers.N (layer of the MLP neurons)")
        hp = resolve(model, neuron_hookpoint(hookpoint), side="input")
        down = base_model(model).get_submodule(hp.module_path)
        encoder = neurons(hp.module_path, width(model, hp), k=neurons_k, W_out=getattr(down, "weight", None))
        return encoder, hp
    if hookpoint:  # a hookpoint the model lacks is reported with the valid names before any file is read
        resolve(model, hookpoint)
    if dictionary == "default":
        encoder = load_dictionary(DEFAULT_DICTIONARY, hookpoint or DEFAULT_HOOKPOINT)
    else:
        encoder = load_dictionary(dictionary, hookpoint)
    hp = resolve(model, hookpoint or encoder.hookpoint, side=encoder.side)
    actual = width(model, hp)
    if actual != encoder.d_in:
        raise DictionaryError(
            f"dictionary {encoder.name} expects d_in={encoder.d_in}, but hookpoint {hp.name!r} "
            f"({hp.side} of {hp.module_path}) has width {actual}"
        )
    return encoder, hp
