"""Opening a dictionary against a subject model, checking that the two fit together.

A dictionary trained on another model or layer still loads and encodes without an error, into
meaningless latents; so the hookpoint is resolved against the model and the widths are compared
here, once, before any activation is cached, and a mismatch says both numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from autointerp.subjects.hookpoints import Hookpoint, base_model, n_layers, resolve, width
from autointerp.subjects.in_memory import holds_module, module_encoder
from autointerp.subjects.sources import ALL, DictionarySource, locate_dictionary


def open_dictionary(
    model: nn.Module,
    dictionary: str | DictionarySource,
    hookpoint: str | None = None,
    *,
    neurons_k: int = 32,
    revision: str | None = None,
) -> tuple[Encoder, Hookpoint]:
    """The encoder and the hookpoint it reads, validated against the model.

    `dictionary` is "default" (the SAE shipped in data/), "neurons" (the MLP neurons of the layer
    named by `hookpoint`), a local path to a sparsify, SAELens or Gemma Scope checkpoint, a Hub repo
    `ORG/NAME[/FOLDER]` (at `revision`) or `saelens:RELEASE/SAE_ID`, or a source already located
    with `sources.locate_dictionary` (which is how a caller fetches it before loading the model) or
    registered by `in_memory.register_dictionary` (an object handed in from Python).
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
        if isinstance(dictionary, str):
            (dictionary,) = locate_dictionary(dictionary, [hookpoint] if hookpoint else None, revision)
        where = hookpoint or dictionary.hookpoint
        if holds_module(dictionary.path) and where:  # a module handed in from Python: called as it is
            encoder = module_encoder(dictionary.path, where, width(model, resolve(model, where)))
        else:
            encoder = load_dictionary(dictionary.path, dictionary.hookpoint, dictionary.cfg_overrides)
        encoder.name = dictionary.name or encoder.name
    hp = resolve(model, hookpoint or encoder.hookpoint, side=encoder.side)
    actual = width(model, hp)
    if actual != encoder.d_in:
        raise DictionaryError(
            f"dictionary {encoder.name} expects d_in={encoder.d_in}, but hookpoint {hp.name!r} "
            f"({hp.side} of {hp.module_path}) has width {actual}"
        )
    return encoder, hp


def open_dictionaries(
    model: nn.Module,
    dictionary: str | Sequence[DictionarySource],
    hookpoints: Sequence[str] | None = None,
    *,
    neurons_k: int = 32,
) -> list[tuple[Encoder, Hookpoint]]:
    """The encoders of a run of one or several hookpoints, each with the hookpoint it reads.

    `dictionary` is "default", "neurons" (one dictionary per layer named in `hookpoints`, or every layer
    with `[ALL]`), or the sources `sources.locate_dictionaries` found. Two dictionaries that read the
    same hookpoint are refused: a run's rows are named by (hookpoint, latent).
    """
    if dictionary == "neurons":
        if not hookpoints:
            raise DictionaryError("--dictionary neurons needs --hookpoint layers.N (layer of the MLP neurons)")
        names = [f"layers.{i}" for i in range(n_layers(model))] if list(hookpoints) == [ALL] else list(hookpoints)
        opened = [open_dictionary(model, "neurons", name, neurons_k=neurons_k) for name in names]
    elif isinstance(dictionary, str):
        if dictionary != "default":
            raise DictionaryError(f"locate {dictionary!r} with sources.locate_dictionaries first")
        if hookpoints is not None and len(hookpoints) > 1:
            raise DictionaryError(f"the default dictionary reads one hookpoint, {DEFAULT_HOOKPOINT}")
        opened = [open_dictionary(model, "default", hookpoints[0] if hookpoints else None, neurons_k=neurons_k)]
    else:
        opened = [open_dictionary(model, source, source.hookpoint, neurons_k=neurons_k) for source in dictionary]
    seen: dict[str, str] = {}
    for encoder, hp in opened:
        if hp.name in seen:
            raise DictionaryError(
                f"two dictionaries read hookpoint {hp.name!r} ({seen[hp.name]} and {encoder.name}); a run holds "
                "one dictionary per hookpoint"
            )
        seen[hp.name] = encoder.name
    return opened
