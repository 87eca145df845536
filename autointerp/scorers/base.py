"""What every scorer is: a name, metric columns, the judge it needs, its own settings, and
`await scorer(record, explanation, judge)`.

The run, the CLI, the results table and the benches only ever talk to this interface, so a new
scorer is one new module in this package (its class decorated with `registry.register`, its
settings class declared beside it), its prompts and its tests: nothing else learns its name or its
options. A scorer says up front what it needs from a judge, and `check_judge` refuses an unfit judge
once, before any latent is scored, with the reason; otherwise every latent would fail with the same
error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from autointerp.errors import AutointerpError
from autointerp.llm.base import can_score_text
from autointerp.records import Explanation, LatentRecord, Score
from autointerp.settings import Checked

if TYPE_CHECKING:
    from autointerp.cache.store import ActivationCache
    from autointerp.config import RunConfig
    from autointerp.embeddings import Embedder
    from autointerp.llm.base import Judge

# What a scorer asks of its judge: chat answers, the top logprobs of generated tokens, or the logprobs
# of a given text (teacher forcing). None: it asks no LLM at all.
Capability = Literal["chat", "logprobs", "prompt_logprobs"]
CAPABILITY_WORDS: dict[str, str] = {
    "chat": "chat answers",
    "logprobs": "logprobs of its answers",
    "prompt_logprobs": "prompt logprobs (the log-probability of every token of a given text)",
}

T = TypeVar("T")
SettingsT = TypeVar("SettingsT", bound="ScorerSettings")


class UnfitJudge(AutointerpError):
    """The judge cannot do what a scorer needs; the message says what it lacks and what would work."""


def has_capability(judge: Judge, capability: Capability) -> bool:
    if capability == "logprobs":
        return bool(judge.supports_logprobs)
    if capability == "prompt_logprobs":
        return can_score_text(judge)
    return True


class ScorerSettings(Checked):
    """The settings a scorer owns, declared in its own module as a dataclass of `setting()` fields.

    `section` names them in a run's config (`RunConfig.scoring[section]`, config.json's
    `"scoring": {section: {...}}`) and in the option table (`scoring.<section>.<field>`); a field
    placed on the command line (`cli=SCORING`) becomes an option of the stage commands, its help
    and checks read from the field. Scorers of one family may share a section (detection and
    fuzzing ask the judge the same way); a scorer may own several (fuzzing: the family's and its own).
    The run's config holds them as plain values, so settings import no scorer: the registry checks
    each section against the class that owns it.
    """

    section: ClassVar[str] = ""

    @classmethod
    def of(cls: type[SettingsT], config: RunConfig) -> SettingsT:
        """These settings as the run's config gives them (defaults for what it leaves out). Keys this
        version does not know are ignored here, as a newer version's config.json must still load; the
        registry's `check_config` refuses them before a stage runs."""
        given = config.scoring.get(cls.section) or {}
        known = set(cls.field_names())
        return cls(**{k: v for k, v in given.items() if k in known})

    @classmethod
    def field_names(cls) -> list[str]:
        # every subclass is a dataclass; this base is not one, so the checker cannot know it
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class ScorerContext:
    """What the scorers of one run share, so that each is built from the config alone.

    `cache` is the run's activation cache; `embedder` gets an embedding model by name (one instance
    per name for the run, shared with the sampler's similar negatives); `steering_subject` loads the
    subject model with a hookpoint's dictionary (called on first use only). `shared` keeps one object per key
    for the run: the two intervention scorers share one steering runner, so a latent is steered once.
    """

    cache: ActivationCache | None = None
    embedder: Callable[[str], Embedder] | None = None
    steering_subject: Callable[[str | None], Any] | None = None  # called with the hookpoint (None: the only one)
    # a run of several hookpoints: each one's cache, opened on first use, and their names in the run's order
    caches: Callable[[str], ActivationCache] | None = None
    hookpoints: list[str] = field(default_factory=list)
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    def cache_for(self, hookpoint: str | None) -> ActivationCache | None:
        """The activation cache of a hookpoint (None: the run's only one)."""
        if hookpoint is None or self.caches is None:
            return self.cache
        return self.caches(hookpoint)

    def shared(self, key: str, make: Callable[[], T]) -> T:
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]


class Scorer(ABC):
    """A way to score an explanation against a latent's held-out examples.

    Class attributes, read by the run and the results without building a scorer:
    - `name`: the scorer's name on the command line and in column names;
    - `metrics`: its metric columns (`<name>_<metric>` in results.parquet), headline first;
    - `summary`: a few words for `--help`;
    - `judge_capability`: what it needs of a judge, None when it asks no LLM (`needs_judge` follows);
    - `can_pick_best_of`: whether it can rate candidate labels on a record's validation split;
    - `settings_classes`: the `ScorerSettings` classes it reads (its options come from their fields).
    """

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    summary: ClassVar[str] = ""
    judge_capability: ClassVar[Capability | None] = "chat"
    needs_judge: ClassVar[bool] = True
    can_pick_best_of: ClassVar[bool] = True
    settings_classes: ClassVar[tuple[type[ScorerSettings], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.needs_judge = cls.judge_capability is not None

    @classmethod
    def from_config(cls, config: RunConfig, context: ScorerContext) -> Scorer:
        """The scorer with the run's settings; scorers with settings or shared parts override this."""
        return cls()

    def check_judge(self, judge: Judge | None) -> None:
        """Raise `UnfitJudge`, with the reason, if this scorer cannot score with `judge`."""
        if self.judge_capability is None:
            return
        if judge is None:
            raise UnfitJudge(f"the {self.name} scorer needs a judge, and none was given")
        if not has_capability(judge, self.judge_capability):
            raise UnfitJudge(self.unfit_message(judge))

    def unfit_message(self, judge: Judge) -> str:
        assert self.judge_capability is not None
        return (
            f"the {self.name} scorer needs a judge that gives {CAPABILITY_WORDS[self.judge_capability]}; "
            f"{judge.model} does not"
        )

    def judge_model(self, judge: Judge | None) -> str | None:
        """The model recorded as this scorer's judge (provenance): the judge's, unless it asks no LLM."""
        return judge.model if judge is not None else None

    @abstractmethod
    async def __call__(self, record: LatentRecord, explanation: Explanation, judge: Any) -> Score: ...

    async def control(self, record: LatentRecord, explanation: Explanation, judge: Any) -> Score:
        """The score that is this one's chance level, for the run's control pass; `explanation` is another
        latent's label. Scoring the latent's examples with a wrong label is the chance level of a scorer
        that rates labels; one that ignores the label (it rates the latent itself) overrides this with
        what chance means for it."""
        return await self(record, explanation, judge)
