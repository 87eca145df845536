"""Every setting of a run, with its default, its checks and how the command line shows it, in one place.

A setting is declared once, as a dataclass field made by `setting()`: its default, a help text, the
bounds it must keep and, for the ones users set, where it appears on the command line (which commands,
which group of `--help`, the flag). `RunConfig` (config.py) nests the classes of this module; each
scorer declares its own in its module (scorers/base.py: `ScorerSettings`), with the same `setting()`.
The CLI's options, their `--help` lines and the defaults shown there are generated from the fields
(option_table.py), so the library, the command line and config.json cannot disagree about a default
or a check, and adding a setting is one field.

The classes check themselves when they are made (`__post_init__`): a wrong type, a value outside
its choices (the `Literal` annotation) or its bounds raises `ConfigError` naming the option, so a
library caller gets the same checks as the command line. Fields can still be assigned afterwards,
which is why `RunConfig.validate()` checks everything again before a stage runs.

This module imports nothing heavy (no torch, numpy or pandas): `import autointerp.config` must stay
cheap for a notebook, the CLI's `--help` and the HTTP service.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from autointerp.errors import ConfigError

# ---------------------------------------------------------------- how a setting appears on the command line

STAGE_COMMANDS = ("run", "cache", "explain", "score")

# the argument groups of `--help`, in order; a group whose options all define the run folder says so
GROUPS = {
    "cache": "what to cache",
    "latents": "which latents",
    "examples": "examples",
    "judges": "judges",
    "explaining": "explaining",
    "scoring": "scoring",
    "running": "where and how fast",
}


@dataclass(frozen=True)
class Placement:
    """Which commands show an option, and in which group of their `--help`."""

    commands: tuple[str, ...]
    group: str


CACHING = Placement(("run", "cache"), "cache")
LATENTS = Placement(("run", "explain", "score"), "latents")
# the train/test split is fixed for a run folder, so it is given where the folder is first made too: `cache`
EXAMPLES = Placement(("run", "cache", "explain", "score"), "examples")
JUDGES = Placement(("run", "explain", "score"), "judges")
EXPLAINING = Placement(("run", "explain"), "explaining")
SCORING = Placement(("run", "score"), "scoring")
RUNNING_MODEL = Placement(("run", "cache"), "running")
RUNNING = Placement(("run", "explain", "score"), "running")


@dataclass(frozen=True)
class Option:
    """A setting's command-line option. The flag is `--field-name` unless `flag` says otherwise."""

    placement: Placement
    flag: str | None = None
    parse: Callable[[str], Any] | None = None  # argparse `type`; default: from the field's annotation
    metavar: str | None = None
    none_means: str | None = None  # what the default None means, shown as the default in --help
    negate: bool = False  # a flag that turns a True default off (--no-cache)
    also: tuple[str, ...] = ()  # other RunConfig fields (dotted) the option sets to the same value
    repeat: bool = False  # given once per value (--allow-judge A --allow-judge B); the field holds them all


def setting(
    default: Any = MISSING,
    help: str | Callable[[Any], str] = "",
    *,
    factory: Callable[[], Any] | Any = MISSING,
    cli: Placement | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    none_means: str | None = None,
    negate: bool = False,
    also: tuple[str, ...] = (),
    repeat: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    frozen: bool = False,
) -> Any:
    """A dataclass field with what the checks and the command line need to know about it.

    `cli` places it on the command line (None: a setting for the library and config.json only);
    `at_least` / `above` / `at_most` bound a number (None passes); `frozen` marks a `RunConfig` field
    that defines the run folder (the cache and the train/test split), so a later command must agree.
    """
    option = (
        Option(
            cli, flag=flag, parse=parse, metavar=metavar, none_means=none_means, negate=negate, also=also, repeat=repeat
        )
        if cli
        else None
    )
    metadata = {
        "help": help,
        "option": option,
        "at_least": at_least,
        "above": above,
        "at_most": at_most,
        "frozen": frozen,
    }
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def option_of(f: Any) -> Option | None:
    return f.metadata.get("option")


def flag_of(f: Any) -> str:
    option = option_of(f)
    return (option.flag if option and option.flag else None) or "--" + f.name.replace("_", "-")


def display_name(f: Any) -> str:
    """How messages name a setting: its flag when it has one (what the user typed), else its field name."""
    return flag_of(f) if option_of(f) else f.name


# ---------------------------------------------------------------- checking values against their fields


_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """The fields' annotations as types (this module's annotations are strings until resolved)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values a `Literal` annotation (possibly `| None`) allows, or None when it is not one."""
    args = [a for a in _union_args(annotation) if a is not type(None)]
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        return typing.get_args(args[0])
    return None


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this check does not understand is not checked


def _describe(annotation: Any) -> str:
    allowed = choices(annotation)
    if allowed is not None:
        return "one of " + ", ".join(repr(a) for a in allowed)
    return " or ".join(_word(a) for a in _union_args(annotation))


def _word(annotation: Any) -> str:
    listed = _list_word(annotation)
    return _WORDS.get(annotation) or listed or str(getattr(annotation, "__name__", annotation))


_WORDS: dict[Any, str] = {
    type(None): "None",
    bool: "True or False",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _list_word(annotation: Any) -> str | None:
    if typing.get_origin(annotation) is not list:
        return None
    (item,) = typing.get_args(annotation) or (Any,)
    kinds = [
        _WORDS.get(a, getattr(a, "__name__", str(a))).removeprefix("an ").removeprefix("a ") for a in _union_args(item)
    ]
    return "a list of " + " or ".join(f"{kind}s" for kind in kinds)


def check_fields(obj: Any) -> None:
    """Raise `ConfigError` for the first field of `obj` whose value has the wrong type, is not among
    its choices, or is out of its bounds."""
    annotations = hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        annotation = annotations[f.name]
        name = display_name(f)
        if not _type_ok(value, annotation):
            raise ConfigError(f"{name} must be {_describe(annotation)}, not {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, above, high = f.metadata.get("at_least"), f.metadata.get("above"), f.metadata.get("at_most")
            if low is not None and value < low:
                raise ConfigError(f"{name} must be at least {low:g}, got {value!r}")
            if above is not None and not value > above:
                bound = "positive" if above == 0 else f"more than {above:g}"
                raise ConfigError(f"{name} must be {bound}, got {value!r}")
            if high is not None and value > high:
                raise ConfigError(f"{name} must be at most {high:g}, got {value!r}")


class Checked:
    """Settings that check their fields when made; `check()` runs the same checks again later."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        check_fields(self)


# ---------------------------------------------------------------- the settings of each stage

CTX_LEN = 256
DEFAULT_DICTIONARY_HOOKPOINT = "layers.3"  # where the SAE shipped in data/ reads

NegativeKind = Literal["random", "similar", "cooccurring"]
NEGATIVE_KINDS: tuple[str, ...] = typing.get_args(NegativeKind)
ExplainerStyle = Literal["names", "excerpts", "contrastive"]
EXPLAINER_STYLES: tuple[str, ...] = typing.get_args(ExplainerStyle)
# runs configured before the names style existed saved the excerpts style under this name
OLD_STYLE_NAMES = {"default": "excerpts"}
ControlKind = Literal["shuffled", "none"]
PrependBos = Literal["auto", "yes", "no"]
CONTROL_KINDS: tuple[str, ...] = typing.get_args(ControlKind)
TOKENS_EXPLAINER = "tokens"  # the explainer "model" that labels from marked tokens, with no LLM


@dataclass
class CacheSettings(Checked):
    """How the corpus is cut and what the activation cache keeps per latent."""

    ctx_len: int | None = setting(
        None,
        "tokens per context, the rows of the corpus the subject model reads (one forward pass each); a multiple "
        "of the 32-token window",
        cli=CACHING,
        metavar="N",
        none_means=f"the dictionary's (SAELens context_size, sparsify's ctx_len, Gemma Scope's 1024), else {CTX_LEN}",
        at_least=1,
    )
    prepend_bos: PrependBos = setting(
        "auto",
        "put the tokenizer's BOS token at position 0 of every context; auto: as the dictionary was trained (SAELens "
        "prepend_bos, sparsify's chunking, Gemma Scope: yes), else as the tokenizer does by default",
        cli=CACHING,
    )
    window_len: int = setting(32, "tokens per window: an example is one window", at_least=1)
    top_k: int = setting(64, "strongest windows kept per latent", at_least=1)
    sample_size: int = setting(256, "activating windows sampled uniformly per latent", at_least=1)
    batch_rows: int = setting(8, "contexts per forward pass", cli=CACHING, at_least=1)
    checkpoint_rows: int = setting(256, "rows between two checkpoints of a cache being built", at_least=1)
    seed: int = setting(0, "seed for every random draw", cli=CACHING, also=("sampling.seed",))

    def check(self) -> None:
        super().check()
        if self.ctx_len is not None and self.ctx_len % self.window_len:
            raise ConfigError(
                f"the context length ({self.ctx_len}) must be a multiple of the window length ({self.window_len})"
            )


@dataclass
class SamplingSettings(Checked):
    """What a latent's record holds: how many examples on each side of the split, and how they are drawn."""

    n_train: int = setting(40, "activating examples shown to the explainer", cli=EXAMPLES, at_least=0)
    n_test: int = setting(50, "held-out activating examples per scorer", cli=EXAMPLES, at_least=0)
    n_negatives: int = setting(50, "held-out non-activating examples", cli=EXAMPLES, at_least=0)
    n_train_negatives: int = setting(
        20, "non-activating examples shown to the contrastive explainer", cli=EXAMPLES, at_least=0
    )
    n_validation: int = setting(
        20, "activating (and as many silent) examples best-of-n rates its candidate labels on", at_least=0
    )
    n_quantiles: int = setting(10, "activation quantiles the examples are spread over", at_least=1)
    train_type: Literal["quantiles", "top"] = setting(
        "quantiles",
        "explainer examples spread over activation quantiles, or the strongest",
        cli=EXAMPLES,
    )
    min_examples: int = setting(20, "skip latents active in fewer windows than this", cli=EXAMPLES, at_least=0)
    seed: int = setting(0, "seed of the sampler's draws (--seed sets it with the cache's)")
    negatives: NegativeKind = setting(
        "random",
        "non-activating examples: 'random': random silent windows; 'similar': silent windows closest by "
        "sentence embedding to the activating ones; 'cooccurring': top windows of the latents that fire with "
        "this one, where it is silent",
        cli=EXAMPLES,
    )
    similar_pool: int = setting(
        500, "with negatives='similar': random windows embedded once per run as candidates", at_least=1
    )
    similar_model: str = setting(
        "default",
        "embedding model that ranks --negatives similar: 'default' (bundled all-MiniLM-L6-v2), a "
        "sentence-transformers folder, or a cached model id",
        cli=EXAMPLES,
    )
    n_cooccurring: int = setting(
        10, "with negatives='cooccurring': latents whose top windows are candidates", at_least=1
    )


@dataclass
class ExplainerSettings(Checked):
    """How the explainer is asked for a label."""

    style: ExplainerStyle | None = setting(
        None,
        "names: show the tokens marked most often and ask for a short phrase naming their kind (the label "
        "is the phrase and those tokens); excerpts: show activating excerpts and let the explainer reason; "
        "contrastive: also show non-activating ones (hard with --negatives similar) and ask what sets them "
        "apart",
        cli=EXPLAINING,
        flag="--explainer-style",
        none_means="names for the embedded llama.cpp explainers, excerpts for openai: and vllm: ones; a folder "
        "already explained keeps its style",
    )
    mark_fraction: float = setting(
        0.3, "mark tokens above this fraction of the example's max activation", at_least=0, at_most=1
    )
    show_activations: bool = setting(
        False, "also show the explainer 0-10 activation values of marked tokens", cli=EXPLAINING
    )
    token_counts: bool = setting(
        False, "also list the most frequent marked tokens with their counts for the explainer", cli=EXPLAINING
    )
    max_words: int = setting(15, "the longest label the explainer is asked for, in words", cli=EXPLAINING, at_least=1)
    max_tokens: int = setting(300, "the first, free-text answer: some reasoning, then the label line", at_least=1)
    max_reasks: int = setting(2, "extra attempts, JSON-constrained, after an unparseable or cut-off answer", at_least=0)
    reask_max_tokens: int = setting(
        160, "a JSON re-ask: room for max_label_chars at two characters a token", at_least=1
    )
    max_label_chars: int = setting(
        300, "the JSON schema's maxLength; a label that reaches it was cut there", at_least=1
    )
    # The shipped example is about months; small explainers copy it verbatim onto unrelated latents
    # (Qwen2.5-1.5B and SmolLM2 both did), so it is off unless asked for.
    fewshot: bool = setting(False, "show the shipped few-shot example first")
    best_of: int = setting(
        1,
        "sample N labels and keep the one --best-of-scorer rates best on a validation split that the final "
        "scores never see (Transluce's recipe); costs N explainer calls, and N ratings on the validation "
        "split, more per latent",
        cli=EXPLAINING,
        metavar="N",
        at_least=1,
    )
    best_of_scorer: str = setting("detection", "scorer that picks among best-of-n labels", cli=EXPLAINING)
    best_of_temperature: float = setting(0.7, "labels after the first are samples at this temperature", at_least=0)
    tokens_max: int = setting(5, "--explainer tokens: name at most this many tokens", at_least=1)
    tokens_min_examples: int = setting(
        2, "--explainer tokens: name a token only if it is marked in at least this many training examples", at_least=1
    )
    names_top: int = setting(10, "names style: the explainer sees this many of the most-marked tokens", at_least=1)
    names_examples: int = setting(
        3, "names style: the label names this many of them (each marked in tokens_min_examples examples)", at_least=0
    )
    names_max_chars: int = setting(60, "names style: the JSON schema's maxLength for the phrase", at_least=8)
    names_max_tokens: int = setting(40, "names style: the answer's token limit", at_least=1)
    phrase_check: bool = setting(
        True,
        "names style: do not ask the judge whether each token the label lists is an instance of its phrase "
        "(one short call per token, P(Yes) from logprobs; a phrase too few of them are instances of, see "
        "--phrase-check-p and --phrase-check-share, is dropped and the label names the tokens alone)",
        cli=EXPLAINING,
        flag="--no-phrase-check",
        negate=True,
    )
    # A 1.5B judge asked about one token says Yes to most: a token counts only where it is fairly sure
    phrase_check_p: float = setting(
        0.8,
        "names style: the phrase check counts a token as an instance of the phrase where its P(Yes) is at least this",
        cli=EXPLAINING,
        at_least=0,
        at_most=1,
    )
    phrase_check_share: float = setting(
        1.0,
        "names style: keep the phrase only where at least this share of its listed tokens are instances of it "
        "(1: every one)",
        cli=EXPLAINING,
        at_least=0,
        at_most=1,
    )

    def __post_init__(self) -> None:
        if self.style is not None:
            self.style = OLD_STYLE_NAMES.get(self.style, self.style)  # type: ignore[assignment]
        super().__post_init__()
