"""How the dictionary was trained to see contexts, and the corpus cut into contexts that way.

An SAE's latents are only meaningful on activations like the ones it was trained on. Those depend on
more than the model and the layer: whether every context began with the BOS token (Gemma run without
BOS is out of distribution at every position), how long the contexts were, which token sat between
two documents, and which positions the training skipped. Each library packs differently:

- SAELens tokenizes each document without special tokens and packs the tokens into contexts of
  `context_size`: BOS at position 0 of every context when `prepend_bos` (also for a context that
  continues a document), its `sequence_separator_token` (BOS unless the cfg says otherwise) between
  two documents in one context, the last partial context dropped; `disable_concat_sequences` gives
  one document per context. `exclude_special_tokens` and `seqpos_slice` leave positions out of
  training.
- sparsify joins the texts of a batch of documents with the EOS token (one before the first too),
  tokenizes the whole with the tokenizer's default special tokens and cuts chunks of `ctx_len` (its
  run-level config.json), dropping the last; `exclude_tokens` leaves tokens out of training.
- Gemma Scope was trained with BOS at the start of contexts of 1024 tokens.

`recorded_contexts` reads what a dictionary's files say (no weights, no model), and refuses, by
name and value, a setting that changes what the encoder sees and that we do not honour; this runs
before the model loads. `resolve_contexts` turns what is recorded, the options given and the
tokenizer into one `ContextSpec`, with the reason for each choice; `pack_contexts` cuts documents
(text, or token ids used as they are) into contexts by it; `ContextSpec.silenced` says which
positions' activations are not cached (BOS, excluded tokens, positions outside the slice), so they
are never shown to the explainer as activating nor judged.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from autointerp.corpus import tokenized
from autointerp.errors import AutointerpError
from autointerp.settings import CTX_LEN
from autointerp.subjects.dictionaries import DEFAULT_DICTIONARY, GEMMA_SCOPE_FILE
from autointerp.subjects.sources import DictionarySource

Packing = Literal["plain", "saelens", "sparsify"]
Document = str | Sequence[int]
SPARSIFY_DOCS_PER_CALL = 2048  # sparsify tokenizes this many documents joined, and drops each call's tail
GEMMA_SCOPE_CTX_LEN = 1024
DOCS_PER_CALL = 64

# SAELens cfg keys (v6, older flat configs, training-run fields) that do not change what the encoder
# reads, or that the loader itself honours (architecture, widths, k, input normalisation, b_dec).
SAELENS_HARMLESS = frozenset(
    {
        # the SAE and its encoding (the loader reads these)
        "architecture", "d_in", "d_sae", "d_out", "dtype", "device", "k", "activation_fn", "activation_fn_str",
        "activation_fn_kwargs", "rescale_acts_by_decoder_norm", "apply_b_dec_to_input", "normalize_activations",
        "norm_scaling_factor", "finetuning_scaling_factor", "metadata",
        # what and where (hook_name is where we read; the others only describe the training run)
        "model_name", "model_class_name", "hook_name", "hook_point", "hook_layer", "hook_point_layer",
        "hook_eval", "dataset_path", "dataset_trust_remote_code", "is_dataset_tokenized", "streaming",
        "neuronpedia_id", "sae_lens_version", "sae_lens_training_version", "training_architecture",
        "training_architecture_details", "model_kwargs", "use_chat_formatting",
        # contexts: honoured by this module
        "prepend_bos", "context_size", "seqpos_slice", "exclude_special_tokens", "sequence_separator_token",
        "disable_concat_sequences", "hook_head_index", "hook_point_head_index", "reshape_activations",
        "model_from_pretrained_kwargs",
        # training only
        "decoder_init_norm", "l1_coefficient", "l1_warm_up_steps", "lp_norm", "aux_loss_coefficient",
        "use_sparse_activations", "jumprelu_bandwidth", "jumprelu_init_threshold", "jumprelu_sparsity_loss_mode",
        "jumprelu_ste_to_input", "jumprelu_tanh_scale", "l0_coefficient", "l0_warm_up_steps",
        "pre_act_loss_coefficient", "target_l0", "topk_threshold_lr", "matryoshka_widths", "use_matryoshka_aux_loss",
        "act_store_device", "activations_mixing_fraction", "adam_beta1", "adam_beta2", "autocast", "autocast_lm",
        "cached_activations_path", "checkpoint_path", "compile_llm", "compile_sae", "dead_feature_threshold",
        "dead_feature_window", "eval_batch_size_prompts", "feature_sampling_window", "from_pretrained_path",
        "llm_compilation_mode", "llm_device", "logger", "lr", "lr_decay_steps", "lr_end", "lr_scheduler_name",
        "lr_warm_up_steps", "n_batches_for_norm_estimate", "n_batches_in_buffer", "n_checkpoints", "n_eval_batches",
        "n_restart_cycles", "output_path", "prefetch_llm_batches", "resume_from_checkpoint", "sae",
        "sae_compilation_mode", "save_final_checkpoint", "seed", "store_batch_size_prompts",
        "train_batch_size_tokens", "training_tokens", "use_cached_activations", "verbose", "b_dec_init_method",
        "expansion_factor", "use_ghost_grads", "tokens_per_buffer", "total_training_tokens", "train_batch_size",
        "store_batch_size", "run_name", "log_to_wandb", "wandb_project", "wandb_entity", "wandb_log_frequency",
        "eval_every_n_wandb_logs", "mse_loss_normalization", "scale_sparsity_penalty_by_decoder_norm",
        "init_encoder_as_decoder_transpose", "decoder_heuristic_init", "decoder_orthogonal_init",
        "normalize_sae_decoder", "noise_scale", "sparsity_log_frequency", "sae_lens_training_version_date",
        "feature_sampling_method", "resample_batches", "feature_reinit_scale", "dead_feature_estimation_method",
        "wandb_id", "log_optimizer_state_to_wandb", "log_activations_store_to_wandb", "log_weights_to_wandb",
        "hook_point_eval", "resume", "use_error_term", "apply_finetuning_scaling_factor",
    }
)  # fmt: skip
# TransformerLens load options that leave the residual stream, MLP and attention outputs as they are
# (centring the writing weights does not: it removes each token's mean across dimensions)
HARMLESS_MODEL_KWARGS = frozenset(
    {"fold_ln", "center_unembed", "fold_value_biases", "dtype", "torch_dtype", "device", "n_devices",
     "move_to_device", "default_padding_side", "trust_remote_code", "revision", "first_n_layers"}
)  # fmt: skip
SAELENS_NORMALISATIONS = (
    "none",
    "constant_norm_rescale",
    "layer_norm",
    "expected_average_only_in",
    "covariance_whitening",
)
# sparsify: hookpoint cfg.json (the coder) and the run's config.json fields that do not change contexts
SPARSIFY_CODER_KEYS = frozenset(
    {"activation", "expansion_factor", "normalize_decoder", "num_latents", "k", "multi_topk", "skip_connection",
     "transcode", "d_in", "signed"}
)  # fmt: skip


GEMMA_SCOPE_ARRAYS = frozenset({"W_enc", "w_enc", "W_dec", "w_dec", "b_enc", "b_dec", "threshold", "scaling_factor"})


class ContextError(AutointerpError):
    """A dictionary setting that changes what the encoder sees and that cannot be honoured, or options that
    cannot make the contexts asked for; the message names the field and its value."""


@dataclass(frozen=True)
class Recorded:
    """What one dictionary's files say about the contexts it was trained on (None: they do not say)."""

    name: str  # the dictionary, for messages
    packing: Packing  # saelens and Gemma Scope: per-document tokens; sparsify: joined text; plain: unknown
    where: str  # the file the values come from, for the reasons
    prepend_bos: bool | None = None
    ctx_len: int | None = None
    separator: int | str | None = "bos"  # SAELens's sequence_separator_token: bos, eos, sep, an id, or None
    one_document: bool = False  # SAELens's disable_concat_sequences
    exclude_special: bool = False  # SAELens's exclude_special_tokens: True
    exclude_ids: tuple[int, ...] = ()  # SAELens's exclude_special_tokens as ids, sparsify's exclude_tokens
    positions: tuple[int | None, int | None, int | None] | None = None  # SAELens's seqpos_slice


@dataclass(frozen=True)
class ContextSpec:
    """The contexts a run caches: how long, how the corpus is packed, which positions are not cached."""

    ctx_len: int
    prepend_bos: bool
    packing: Packing
    bos: int | None = None
    separator: int | None = None  # between two documents (plain: after every document)
    one_document: bool = False
    silenced_tokens: tuple[int, ...] = ()  # token ids whose activations are never cached
    positions: tuple[int | None, int | None, int | None] | None = None  # only these positions are cached
    reasons: tuple[str, ...] = field(default=(), compare=False)  # what was chosen and why, for people

    def to_dict(self) -> dict[str, Any]:
        """The spec as the cache's metadata records it (what defines the cache; not the reasons)."""
        out = asdict(self)
        del out["reasons"]
        out["silenced_tokens"] = list(self.silenced_tokens)
        out["positions"] = None if self.positions is None else list(self.positions)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextSpec:
        positions = data.get("positions")
        return cls(
            ctx_len=int(data["ctx_len"]),
            prepend_bos=bool(data["prepend_bos"]),
            packing=data["packing"],
            bos=data.get("bos"),
            separator=data.get("separator"),
            one_document=bool(data.get("one_document", False)),
            silenced_tokens=tuple(data.get("silenced_tokens") or ()),
            positions=None if positions is None else (positions[0], positions[1], positions[2]),
        )

    def silenced(self, tokens: np.ndarray) -> np.ndarray | None:
        """[rows, ctx_len] True where the activations are not cached (beyond position 0, which the cache
        never keeps), or None when no position is."""
        mask = np.zeros(tokens.shape, dtype=bool)
        if self.silenced_tokens:
            mask |= np.isin(tokens, np.asarray(self.silenced_tokens, dtype=tokens.dtype))
        if self.positions is not None:
            kept = np.zeros(tokens.shape[1], dtype=bool)
            kept[slice(*self.positions)] = True
            mask |= ~kept[None, :]
        return mask if mask.any() else None

    def describe(self) -> str:
        """One line for the run's output."""
        return "contexts: " + "; ".join(self.reasons)


# ---------------------------------------------------------------- what a dictionary records


def recorded_contexts(dictionary: str | Sequence[DictionarySource]) -> list[Recorded]:
    """What each dictionary of a run records about its training contexts: `dictionary` is "default",
    "neurons", or the located sources. Raises `ContextError` for
    a setting that changes the encoder's input and is not honoured, before any weight or model loads."""
    if dictionary == "neurons":
        return [Recorded("neurons", "plain", "")]
    if isinstance(dictionary, str):
        return [_recorded_at(DEFAULT_DICTIONARY, {})]
    return [_recorded_at(Path(s.path), dict(s.cfg_overrides or {}), s.hookpoint) for s in dictionary]


def _recorded_at(path: Path, overrides: dict[str, Any], hookpoint: str | None = None) -> Recorded:
    if path.suffix == ".npz" or (path / GEMMA_SCOPE_FILE).is_file():
        check_gemma_scope_arrays(path / GEMMA_SCOPE_FILE if path.is_dir() else path)
        return Recorded(str(path), "saelens", "Gemma Scope's defaults", prepend_bos=True, ctx_len=GEMMA_SCOPE_CTX_LEN)
    folder = path.parent if path.is_file() else path
    if (folder / "sae_weights.safetensors").is_file():
        return saelens_recorded(folder, overrides)
    if not (folder / "cfg.json").is_file() and hookpoint and (folder / hookpoint / "cfg.json").is_file():
        folder = folder / hookpoint  # a sparsify run folder and the hookpoint read in it
    return sparsify_recorded(folder)


def check_gemma_scope_arrays(file: Path) -> None:
    """Refuse a params.npz holding an array the loader does not use (it might scale or shift the input);
    the listing is read, not the arrays."""
    try:
        with np.load(file, allow_pickle=False) as data:
            names = list(data.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return  # the loader says what is wrong with it
    unknown = sorted(set(names) - GEMMA_SCOPE_ARRAYS)
    if unknown:
        raise ContextError(
            f"Gemma Scope {file}: unknown array {unknown[0]!r}: autointerp cannot tell whether it changes the "
            f"activations the SAE encodes (it reads {sorted(GEMMA_SCOPE_ARRAYS)})"
        )


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # the loader says what is wrong with it
    return data if isinstance(data, dict) else {}


def saelens_recorded(folder: Path, overrides: dict[str, Any] | None = None) -> Recorded:
    """A SAELens folder's contexts, from its cfg.json (v6: `metadata`; older: flat), after refusing what
    we do not honour."""
    cfg_path = folder / "cfg.json"
    cfg = {**_read(cfg_path), **(overrides or {})}
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else None
    where = f"the SAE's cfg.json ({cfg_path})"

    def get(key: str, default: Any = None) -> Any:
        if meta is not None and meta.get(key) is not None:
            return meta[key]
        return cfg.get(key, default)

    check_saelens_inputs(cfg, where)
    prepend = get("prepend_bos")
    if prepend is None and meta is None and cfg:  # a config from before SAELens 6: it defaulted to BOS
        prepend = True
    exclude = get("exclude_special_tokens", False)
    positions = get("seqpos_slice")
    key = "sequence_separator_token"  # None is a value here: no separator
    separator = meta[key] if meta is not None and key in meta else cfg.get(key, "bos")
    return Recorded(
        str(folder),
        "saelens",
        where,
        prepend_bos=None if prepend is None else bool(prepend),
        ctx_len=int(get("context_size")) if get("context_size") else None,
        separator=separator,
        one_document=bool(get("disable_concat_sequences", False)),
        exclude_special=exclude is True,
        exclude_ids=tuple(int(i) for i in exclude) if isinstance(exclude, list) else (),
        positions=_slice(positions, where),
    )


def _slice(value: Any, where: str) -> tuple[int | None, int | None, int | None] | None:
    if value is None:
        return None
    parts = list(value) if isinstance(value, (list, tuple)) else None
    if parts is None or not 1 <= len(parts) <= 3 or not all(p is None or isinstance(p, int) for p in parts):
        raise ContextError(f"{where}: seqpos_slice {value!r} is not a slice (start, stop, step)")
    if len(parts) == 1:  # slice(*(x,)) is slice(None, x, None), as SAELens reads it
        parts = [None, parts[0]]
    start, stop, step = (parts + [None, None])[:3]
    if start is None and stop is None and step in (None, 1):
        return None
    return (start, stop, step)


def check_saelens_inputs(cfg: dict[str, Any], where: str) -> None:
    """Refuse, naming field and value, what would change the activations the SAE encodes and is not
    honoured: a head index, hook_z reshaping, an input normalisation we lack, TransformerLens weight
    processing that moves the residual stream, and any key not known to be harmless."""
    meta: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    merged = {**cfg, **{k: v for k, v in meta.items() if v is not None}}
    for key in ("hook_head_index", "hook_point_head_index"):
        if merged.get(key) is not None:
            raise ContextError(
                f"{where}: {key}={merged[key]!r}: the SAE reads one attention head's activations, which autointerp "
                "does not read (it reads whole modules)"
            )
    reshape = merged.get("reshape_activations")
    hook = str(merged.get("hook_name") or merged.get("hook_point") or "")
    if reshape not in (None, "none") or hook.endswith("hook_z"):
        raise ContextError(
            f"{where}: reshape_activations={reshape!r} (hook {hook!r}): the SAE reads the attention heads' outputs "
            "before o_proj, flattened (hook_z), which autointerp does not read"
        )
    norm = cfg.get("normalize_activations")
    if norm is not None and not isinstance(norm, bool) and norm not in SAELENS_NORMALISATIONS:
        raise ContextError(
            f"{where}: normalize_activations={norm!r} is not implemented; autointerp honours {SAELENS_NORMALISATIONS}"
        )
    kwargs = merged.get("model_from_pretrained_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ContextError(f"{where}: model_from_pretrained_kwargs={kwargs!r} is not a mapping")
    for key, value in kwargs.items():
        if key == "center_writing_weights" and not value:
            continue
        if key not in HARMLESS_MODEL_KWARGS:
            raise ContextError(
                f"{where}: model_from_pretrained_kwargs {key}={value!r}: the SAE was trained on a TransformerLens "
                "model processed this way, whose activations differ from the Hugging Face model's that autointerp "
                "reads"
            )
    unknown = sorted(set(cfg) - SAELENS_HARMLESS) + sorted(set(meta) - SAELENS_HARMLESS)
    if unknown:
        key = unknown[0]
        value = cfg[key] if key in cfg else meta[key]
        raise ContextError(
            f"{where}: unknown setting {key}={value!r}: autointerp cannot tell whether it changes the activations "
            "the SAE encodes, so it refuses the SAE rather than cache what it may never have seen"
        )


def sparsify_recorded(folder: Path) -> Recorded:
    """A sparsify hookpoint folder's (or run folder's) contexts: its run-level config.json, when the run
    folder has one (ctx_len, exclude_tokens; the chunking is sparsify's); else nothing is recorded."""
    coder = folder / "cfg.json"
    if coder.is_file():
        cfg = _read(coder)
        unknown = sorted(set(cfg) - SPARSIFY_CODER_KEYS)
        if unknown:
            raise ContextError(
                f"sparsify cfg.json {coder}: unknown setting {unknown[0]}={cfg[unknown[0]]!r}: autointerp cannot "
                "tell whether it changes the activations the coder encodes"
            )
    run_config = next(
        (p for p in (folder / "config.json", folder.parent / "config.json") if _is_sparsify_run_config(p)), None
    )
    if run_config is None:
        return Recorded(str(folder), "plain", "")
    run = _read(run_config)
    where = f"sparsify's run config.json ({run_config})"
    exclude = run.get("exclude_tokens") or []
    if not isinstance(exclude, list) or not all(isinstance(i, int) for i in exclude):
        raise ContextError(f"{where}: exclude_tokens={exclude!r} is not a list of token ids")
    ctx_len = run.get("ctx_len")
    return Recorded(
        str(folder),
        "sparsify",
        where,
        ctx_len=int(ctx_len) if ctx_len else None,
        exclude_ids=tuple(exclude),
    )


def _is_sparsify_run_config(path: Path) -> bool:
    if not path.is_file():
        return False
    data = _read(path)
    return "ctx_len" in data or ("sae" in data and "hookpoints" in data)


# ---------------------------------------------------------------- choosing the contexts


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS first when asked for its default special tokens (Llama, Gemma: yes;
    GPT-2, SmolLM2: no)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def resolve_contexts(
    recorded: Sequence[Recorded],
    tokenizer: Any,
    *,
    ctx_len: int | None = None,
    prepend_bos: str = "auto",
    window_len: int = 32,
) -> ContextSpec:
    """The contexts of a run: the options given (`ctx_len`, `prepend_bos` yes/no) over what the
    dictionaries record, over the tokenizer's own default; every dictionary of the run must agree."""
    specs = [_resolve_one(r, tokenizer, ctx_len, prepend_bos, window_len) for r in recorded]
    first = specs[0]
    for r, spec in zip(recorded[1:], specs[1:], strict=True):
        if spec != first:
            raise ContextError(
                f"the dictionaries of this run were trained on different contexts ({recorded[0].name}: "
                f"{first.to_dict()}; {r.name}: {spec.to_dict()}); cache them in separate runs"
            )
    return first


def _resolve_one(r: Recorded, tokenizer: Any, ctx_len: int | None, prepend_bos: str, window_len: int) -> ContextSpec:
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    reasons: list[str] = []
    default_bos = tokenizer_adds_bos(tokenizer)
    # BOS at position 0
    if prepend_bos in ("yes", "no"):
        prepend = prepend_bos == "yes"
        reasons.append(f"prepend_bos={prepend_bos} from --prepend-bos")
        if prepend and bos is None:
            raise ContextError("--prepend-bos yes: the tokenizer has no BOS token (bos_token_id is None)")
    elif r.packing == "sparsify":
        prepend = default_bos
        reasons.append(
            f"prepend_bos={'yes' if prepend else 'no'} as sparsify's chunking does (the tokenizer's default "
            f"special tokens; {r.where})"
        )
    elif r.prepend_bos is not None:
        prepend = r.prepend_bos and bos is not None
        why = f"from {r.where}" if bos is not None or not r.prepend_bos else f"the tokenizer has no BOS ({r.where})"
        reasons.append(f"prepend_bos={'yes' if prepend else 'no'} {why}")
    else:
        prepend = default_bos
        reasons.append(
            f"prepend_bos={'yes' if prepend else 'no'}: the dictionary does not record it; the tokenizer "
            f"{'adds' if prepend else 'does not add'} BOS by default"
        )
    # context length
    if ctx_len is not None:
        length = ctx_len
        reasons.append(f"ctx_len {length} from --ctx-len")
    elif r.ctx_len is not None:
        length = r.ctx_len
        name = "ctx_len" if r.packing == "sparsify" else "context_size"
        reasons.append(f"ctx_len {length} from {r.where}" + (f" ({name})" if "Gemma" not in r.where else ""))
        limit = getattr(tokenizer, "model_max_length", None)
        if r.packing == "sparsify" and isinstance(limit, int) and limit < length:
            length = limit  # sparsify's chunks are never longer than the tokenizer's limit
            reasons.append(f"cut to the tokenizer's model_max_length {limit}, as sparsify's chunking does")
        if length % window_len:
            length -= length % window_len
            reasons.append(f"rounded down to {length}, a multiple of the {window_len}-token window")
            if length == 0:
                raise ContextError(f"{r.where}: contexts of {r.ctx_len} tokens are shorter than one window")
    else:
        length = CTX_LEN
        reasons.append(f"ctx_len {length}: autointerp's default (the dictionary does not record one)")
    # packing
    packing: Packing = r.packing
    separator: int | None = None
    if packing == "sparsify" and prepend != default_bos:
        packing = "saelens"  # the tokenizer would not give what was asked: pack documents ourselves
        reasons.append(
            "documents packed one by one with EOS between them (sparsify's chunking would follow the tokenizer)"
        )
        separator = eos
    elif packing == "saelens":
        separator = _separator_id(r.separator, tokenizer)
        reasons.append(
            f"documents packed as SAELens does, separated by {_token_name(r.separator)}"
            + (", one document per context" if r.one_document else "")
        )
    elif packing == "sparsify":
        separator = eos
        reasons.append("documents joined with EOS and chunked as sparsify does")
    elif prepend:
        packing = "saelens"
        separator = eos
        reasons.append("documents packed with EOS between them")
    else:
        separator = eos
        reasons.append("documents packed with EOS after each")
    silenced: set[int] = set(r.exclude_ids)
    if r.exclude_special:
        silenced |= special_token_ids(tokenizer)
        reasons.append(f"special tokens {sorted(special_token_ids(tokenizer))} not cached (exclude_special_tokens)")
    elif r.exclude_ids:
        reasons.append(f"tokens {list(r.exclude_ids)} not cached (excluded in training)")
    if bos is not None and (prepend or separator == bos):
        silenced.add(bos)
        reasons.append("BOS positions are never cached")
    if r.positions is not None:
        reasons.append(f"only positions {_slice_text(r.positions)} cached (seqpos_slice)")
    return ContextSpec(
        ctx_len=length,
        prepend_bos=prepend,
        packing=packing,
        bos=bos if prepend else None,
        separator=separator,
        one_document=r.one_document and packing == "saelens",
        silenced_tokens=tuple(sorted(silenced)),
        positions=r.positions,
        reasons=tuple(reasons),
    )


def special_token_ids(tokenizer: Any) -> set[int]:
    """The structural special tokens SAELens's exclude_special_tokens leaves out: BOS, EOS, PAD, SEP and
    the decoder-start token, where the tokenizer has them."""
    attrs = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id")
    return {int(i) for a in attrs if isinstance(i := getattr(tokenizer, a, None), int)}


def _separator_id(separator: int | str | None, tokenizer: Any) -> int | None:
    if separator is None or isinstance(separator, int):
        return separator
    attr = {"bos": "bos_token_id", "eos": "eos_token_id", "sep": "sep_token_id"}.get(str(separator))
    if attr is None:
        raise ContextError(f"sequence_separator_token={separator!r} is none of bos, eos, sep or a token id")
    return getattr(tokenizer, attr, None)


def _token_name(separator: int | str | None) -> str:
    if separator is None:
        return "nothing"
    return f"token {separator}" if isinstance(separator, int) else separator.upper()


def _slice_text(positions: tuple[int | None, int | None, int | None]) -> str:
    start, stop, step = positions
    text = f"{'' if start is None else start}:{'' if stop is None else stop}"
    return text + (f":{step}" if step not in (None, 1) else "")


# ---------------------------------------------------------------- packing the corpus


def pack_contexts(documents: Iterable[Document], tokenizer: Any, spec: ContextSpec) -> Iterator[np.ndarray]:
    """The corpus as contexts of `spec.ctx_len` token ids (int32), lazily; a document given as token ids
    is used as it is. The last partial context is dropped."""
    if spec.packing == "sparsify":
        return _sparsify_chunks(documents, tokenizer, spec)
    tokens = _document_tokens(documents, tokenizer)
    if spec.packing == "plain":
        return _plain(tokens, spec.ctx_len, spec.separator)
    if spec.one_document:
        return _one_per_context(tokens, spec.ctx_len, spec.bos)
    return _saelens(tokens, spec.ctx_len, spec.bos, spec.separator)


def _document_tokens(documents: Iterable[Document], tokenizer: Any) -> Iterator[list[int]]:
    """Each document's tokens without special tokens, tokenized a group at a time (token-id documents
    checked against the tokenizer's size, so ids from another tokenizer fail by name)."""

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    group: list[str | list[int]] = []
    for doc in documents:
        group.append(doc if isinstance(doc, str) else [int(t) for t in doc])
        if len(group) >= DOCS_PER_CALL:
            yield from tokenized(group, encode, len(tokenizer))
            group = []
    if group:
        yield from tokenized(group, encode, len(tokenizer))


def _plain(tokens: Iterator[list[int]], ctx_len: int, separator: int | None) -> Iterator[np.ndarray]:
    """Documents end to end, `separator` after each, cut every `ctx_len` tokens."""
    buffer: list[int] = []
    for ids in tokens:
        buffer.extend(ids)
        if separator is not None:
            buffer.append(separator)
        while len(buffer) >= ctx_len:
            yield np.asarray(buffer[:ctx_len], dtype=np.int32)
            del buffer[:ctx_len]


def _saelens(tokens: Iterator[list[int]], ctx_len: int, bos: int | None, separator: int | None) -> Iterator[np.ndarray]:
    """Contexts as SAELens packs them: `bos` opens every context (unless the document's next token is
    already it), `separator` goes between two documents sharing a context (unless the document starts
    with it), and a document longer than the room left continues in the next context."""
    row: list[int] = []
    for ids in tokens:
        pos = 0
        while pos < len(ids):
            if not row:
                if bos is not None and ids[pos] != bos:
                    row.append(bos)
            elif separator is not None and ids[pos] != separator:
                row.append(separator)
            take = ctx_len - len(row)
            row.extend(ids[pos : pos + take])
            pos += take
            if len(row) == ctx_len:
                yield np.asarray(row, dtype=np.int32)
                row = []


def _one_per_context(tokens: Iterator[list[int]], ctx_len: int, bos: int | None) -> Iterator[np.ndarray]:
    """One document per context, cut to `ctx_len` (BOS first); shorter documents are dropped."""
    for ids in tokens:
        if bos is not None and len(ids) >= ctx_len - 1 and ids[:1] != [bos]:
            ids = [bos, *ids[: ctx_len - 1]]
        if len(ids) >= ctx_len:
            yield np.asarray(ids[:ctx_len], dtype=np.int32)


def _sparsify_chunks(documents: Iterable[Document], tokenizer: Any, spec: ContextSpec) -> Iterator[np.ndarray]:
    """sparsify's chunking: each group of documents joined with the EOS text (one before the first),
    tokenized as a whole with the tokenizer's default special tokens and cut into `ctx_len` chunks, the
    last chunk of each group dropped. Token-id documents are joined with the EOS id and cut the same way."""
    sep = getattr(tokenizer, "eos_token", None) or "<|endoftext|>"
    texts: list[str] = []
    ids: list[int] = []

    def flush_texts() -> Iterator[np.ndarray]:
        out = tokenizer(
            sep.join(["", *texts]),
            max_length=spec.ctx_len,
            truncation=True,
            return_overflowing_tokens=True,
            return_attention_mask=False,
        )
        chunks = out["input_ids"]
        overflow = out.get("overflowing_tokens")
        if chunks and isinstance(chunks[0], int):  # a slow tokenizer: the first chunk, then the rest flat
            rest = list(overflow or [])
            chunks = [chunks] + [rest[i : i + spec.ctx_len] for i in range(0, len(rest), spec.ctx_len)]
        texts.clear()
        for chunk in chunks[:-1]:
            if len(chunk) == spec.ctx_len:
                yield np.asarray(chunk, dtype=np.int32)

    def flush_ids() -> Iterator[np.ndarray]:
        n = len(ids) // spec.ctx_len
        for i in range(n):
            yield np.asarray(ids[i * spec.ctx_len : (i + 1) * spec.ctx_len], dtype=np.int32)
        ids.clear()

    eos = spec.separator
    for doc in documents:
        if isinstance(doc, str):
            texts.append(doc)
            if len(texts) >= SPARSIFY_DOCS_PER_CALL:
                yield from flush_texts()
            continue
        if eos is not None:
            ids.append(eos)
        ids.extend(int(t) for t in doc)
        if len(ids) >= SPARSIFY_DOCS_PER_CALL * spec.ctx_len:
            yield from flush_ids()
    if texts:
        yield from flush_texts()
    if ids:
        yield from flush_ids()
