"""The plain data that flows through a run: examples, latent records, explanations, scores, and
the rows of the run's two logs (`explanations.jsonl`, `scores.jsonl`).

These are deliberately plain dataclasses with no torch in sight, so every later stage (explainers,
scorers, results, report) can be tested with hand-made data and no model. The log rows carry a
schema version; `ExplanationRow.from_json` and `ScoreRow.from_json` read every version this code
has written (the oldest rows have none) and upgrade them, so a run folder stays readable after
an upgrade and no reader has to know the history.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from autointerp.errors import AutointerpError

SCHEMA_VERSION = 4  # of the log rows; 1 = the rows written before versions were recorded
# 2: judgments carry `value` and `detail` with one meaning per field, explanation rows `train_quantiles`;
# 3: score rows carry `donor` (shuffled-label controls);
# 4: a log may hold several hookpoints (rows are named by hookpoint and latent), and a control row names
#    its donor's hookpoint (`donor_hookpoint`; None, as in every older row: the latent's own)


@dataclass(frozen=True)
class LatentId:
    """A latent is named by the hookpoint its dictionary reads and its index in that dictionary."""

    hookpoint: str
    index: int

    def __str__(self) -> str:
        return f"{self.hookpoint}:{self.index}"


@dataclass
class Example:
    """One context window and the latent's activation on each of its tokens.

    `window` is the window's global index in the activation cache; it is what makes train/test
    disjointness checkable (two examples are the same example iff they share a window).
    """

    window: int
    tokens: list[int]
    str_tokens: list[str]
    activations: list[float]
    quantile: int = -1  # activation bin (0 = weakest) for activating examples, -1 for negatives

    @property
    def max_activation(self) -> float:
        return max(self.activations) if self.activations else 0.0

    @property
    def activating(self) -> bool:
        return self.max_activation > 0.0

    @property
    def text(self) -> str:
        return "".join(self.str_tokens)


@dataclass
class LatentStats:
    """Corpus-level statistics of a latent, as counted over every cached token."""

    n_tokens: int  # tokens seen by the cache
    fire_tokens: int  # tokens where the latent was > 0
    fire_windows: int  # windows where it was > 0 somewhere
    max_activation: float

    @property
    def frequency(self) -> float:
        return self.fire_tokens / self.n_tokens if self.n_tokens else 0.0


@dataclass
class LatentRecord:
    """Everything the explainer and the scorers may see of one latent.

    `train` is for the explainer only; `test` and `negatives` are held out for scoring. `validation`
    and `validation_negatives` are a third, smaller split for choosing among candidate explanations
    (best-of-n): choosing by the test split would make the reported scores optimistic. The sampler
    guarantees that no window appears on two sides.
    """

    latent: LatentId
    stats: LatentStats
    train: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    negatives: list[Example] = field(default_factory=list)
    train_negatives: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    validation_negatives: list[Example] = field(default_factory=list)

    def validation_windows(self) -> set[int]:
        return {e.window for e in self.validation} | {e.window for e in self.validation_negatives}

    def train_windows(self) -> set[int]:
        return {e.window for e in self.train} | {e.window for e in self.train_negatives}

    def test_windows(self) -> set[int]:
        return {e.window for e in self.test} | {e.window for e in self.negatives}


@dataclass
class Usage:
    """Token accounting of judge calls, summed over a stage.

    `cached_prompt_tokens` is the part of `prompt_tokens` the backend did not compute again because a
    prefix cache held it (a provider's `cached_tokens`, the KV cache llama.cpp kept from the previous
    prompt): what a prompt layout that puts the unchanging part first saves, and what providers bill at
    a lower price. 0 where the backend does not say.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cached_prompt_tokens: int = 0

    @property
    def computed_prompt_tokens(self) -> int:
        """Prompt tokens the backend evaluated (outside any cache)."""
        return self.prompt_tokens - self.cached_prompt_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls
        self.cached_prompt_tokens += other.cached_prompt_tokens


@dataclass
class Explanation:
    latent: LatentId
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    failures: int = 0  # unparseable answers that were re-asked
    raw: str = ""  # the explainer's full last answer, kept for auditing
    # names style: the phrase checked against the tokens it lists (label_check.PhraseCheck.to_json); None: not checked
    phrase_check: dict[str, Any] | None = None


@dataclass
class Judgment:
    """What the judge said about one example. Every field means the same thing for every scorer.

    Each scorer asks one two-way question per example (does it activate; are these the right tokens;
    is continuation A the steered one; does the steered text make the explanation likelier), whose
    positive answer is Yes / the first option.
    """

    window: int  # the cache window the example (or the intervention prompt) was cut from
    activating: bool  # ground truth: the positive answer is the right one
    prediction: bool | None  # the scorer's reading of the judge: positive; None when no usable answer
    probability: float | None  # the judge's probability of the positive answer, from its logprobs; else None
    max_activation: float
    quantile: int  # activation bin of an activating example, -1 otherwise
    answer: str = ""  # the judge's own words (at most 200 characters); "" when it generated none
    error: str = ""  # why there is no usable answer
    text: str = ""  # what the judge read, exactly as it read it
    value: float | None = None  # the example's number that the scorer's metrics are built from (README: Results)
    detail: str = ""  # what the scorer read from the judge beyond `answer`, in words; or why it did not ask

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Judgment:
        return cls(**_known(cls, data))


@dataclass
class Score:
    latent: LatentId
    scorer: str
    metrics: dict[str, float | None]
    n_examples: int
    n_failed: int
    judgments: list[Judgment] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


@dataclass
class Candidate:
    """One of the labels best-of-n chose among, with its rating on the validation split."""

    text: str
    score: float | None  # the scorer's headline metric on the validation split; None if it had none
    metric: str
    usage: Usage = field(default_factory=Usage)  # explainer and rating calls for this candidate


class RowError(AutointerpError):
    """A log row that cannot be read: malformed, or written by a newer version of autointerp."""


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _usage(data: Any) -> Usage | None:
    return Usage(**_known(Usage, data)) if isinstance(data, dict) else None


def _version(data: Any, kind: str) -> int:
    if not isinstance(data, dict):
        raise RowError(f"a {kind} row must be a JSON object, not {type(data).__name__}")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise RowError(f"a {kind} row has schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise RowError(
            f"a {kind} row has schema_version {version}: it was written by a newer autointerp (this one reads "
            f"up to {SCHEMA_VERSION}); upgrade autointerp to read this run"
        )
    for key in ("latent", "status"):
        if key not in data:
            raise RowError(f"a {kind} row has no {key!r}")
    if not isinstance(data["latent"], int):
        raise RowError(f"a {kind} row's latent is {data['latent']!r}, not an integer")
    return version


@dataclass
class ExplanationRow:
    """One line of `explanations.jsonl`: a latent's explanation (or why it has none), and what it was made from.

    A latent's last row is its current state: a retried or imported explanation is a new row.
    """

    latent: int
    hookpoint: str | None
    status: str  # "ok"; "skipped": too rare to sample, `error` says why; "failed": no label could be read;
    # "error": the explainer crashed, `error` holds the traceback
    error: str = ""
    explanation: str | None = None
    explainer_model: str | None = None  # "imported:<format>:<model>" for an imported explanation
    # the latent, as counted by the cache (None when no record could be built)
    frequency: float | None = None
    max_activation: float | None = None
    fire_windows: int | None = None
    n_tokens: int | None = None
    # the latent's record: its split sizes, and every window the explainer was shown (activating and
    # silent) with each one's activation quantile (-1 for a silent one); None when unknown (imported)
    n_train: int | None = None
    n_test: int | None = None
    n_negatives: int | None = None
    train_windows: list[int] | None = None
    train_quantiles: list[int] | None = None  # parallel to train_windows (schema 2 on)
    validation_windows: list[int] | None = None
    usage: Usage | None = None  # explainer calls, and best-of-n's rating calls
    failures: int | None = None  # unreadable explainer answers that were re-asked
    raw: str | None = None  # the explainer's last answer
    candidates: list[Candidate] | None = None  # best-of-n: every label rated
    chosen_by: str | None = None  # best-of-n: the scorer that rated them
    source: dict[str, Any] | None = None  # imported: the file and entry it came from
    # names style: the phrase, the tokens it was checked against, each one's P(Yes), and whether it was kept
    phrase_check: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ExplanationRow:
        _version(data, "explanation")  # schema 1 rows read as they are: schema 2 only added train_quantiles
        known = _known(cls, data)
        known.setdefault("hookpoint", None)  # a hand-written row may name no hookpoint: it is the run's
        known["usage"] = _usage(data.get("usage"))
        if isinstance(data.get("candidates"), list):
            known["candidates"] = [
                Candidate(**{**_known(Candidate, c), "usage": _usage(c.get("usage")) or Usage()})
                for c in data["candidates"]
                if isinstance(c, dict)
            ]
        row = cls(**{**known, "schema_version": SCHEMA_VERSION})
        if row.train_quantiles is not None and len(row.train_quantiles) != len(row.train_windows or []):
            raise RowError(f"latent {row.latent}: {len(row.train_quantiles)} train_quantiles for its train_windows")
        return row


@dataclass
class ScoreRow:
    """One line of `scores.jsonl`: one scorer's score of one explanation of a latent, with every judgment.

    A *control* row scores the latent's own held-out examples with another latent's label (the
    `donor`'s, which `explanation` then holds): the chance level its real score is read against.
    """

    latent: int
    hookpoint: str | None
    scorer: str
    status: str  # "ok"; "failed": no judge answer could be used; "error": the scorer crashed (`error` says why)
    explanation: str | None = None  # the text scored: a score of another text than the latent's current one is stale
    judge_model: str | None = None  # for a scorer that asks no LLM, the model it used (embedding)
    error: str = ""
    metrics: dict[str, float | None] | None = None
    n_examples: int | None = None
    n_failed: int | None = None
    usage: Usage | None = None
    judgments: list[Judgment] | None = None
    donor: int | None = None  # a control: the latent whose label was scored; None: the latent's own label
    donor_hookpoint: str | None = None  # the donor's hookpoint; None: the latent's own hookpoint
    schema_version: int = SCHEMA_VERSION

    @property
    def control(self) -> bool:
        return self.donor is not None

    @classmethod
    def of(
        cls,
        score: Score,
        *,
        hookpoint: str,
        judge_model: str | None,
        explanation: str,
        donor: int | None = None,
        donor_hookpoint: str | None = None,
    ) -> ScoreRow:
        return cls(
            latent=score.latent.index,
            hookpoint=hookpoint,
            scorer=score.scorer,
            status="ok",
            explanation=explanation,
            judge_model=judge_model,
            metrics=score.metrics,
            n_examples=score.n_examples,
            n_failed=score.n_failed,
            usage=score.usage,
            judgments=score.judgments,
            donor=donor,
            donor_hookpoint=donor_hookpoint if donor_hookpoint != hookpoint else None,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ScoreRow:
        version = _version(data, "score")
        if "scorer" not in data:
            raise RowError("a score row has no 'scorer'")
        known = _known(cls, data)
        known.setdefault("hookpoint", None)
        known["usage"] = _usage(data.get("usage"))
        judgments = data.get("judgments")
        if isinstance(judgments, list):
            if version == 1:
                judgments = [_judgment_v1(data["scorer"], j) for j in judgments]
            known["judgments"] = [Judgment.from_json(j) for j in judgments if isinstance(j, dict)]
        if version < 3:
            known.pop("donor", None)  # no controls before schema 3: every row scored the latent's own label
        elif known.get("donor") is not None and not isinstance(known["donor"], int):
            raise RowError(f"a score row's donor is {known['donor']!r}, not a latent index")
        if version < 4:
            known.pop("donor_hookpoint", None)  # a control's donor was always of the latent's own hookpoint
        return cls(**{**known, "schema_version": SCHEMA_VERSION})


_LEVELS = re.compile(r"\d+(\.\d+)?( \d+(\.\d+)?)*")


def _judgment_v1(scorer: str, j: Any) -> Any:
    """A judgment as schema 1 wrote it, in schema 2's meanings: there, some scorers put numbers they had
    read into `answer` (surprisal's two losses, intervention's two log-probabilities, simulation's
    predicted levels with prompt logprobs) or `probability` (simulation's predicted peak / 9)."""
    if not isinstance(j, dict):
        return j
    j = dict(j)
    answer = j.get("answer") or ""
    if scorer in ("surprisal", "intervention"):
        j["detail"], j["answer"] = answer, ""
    elif scorer == "intervention_choice" and answer.startswith("not asked"):
        j.update(detail=answer, answer="", probability=None, value=0.5)
    elif scorer == "simulation":
        j["probability"] = None
        if _LEVELS.fullmatch(answer):
            j["detail"], j["answer"] = "predicted " + answer, ""
    return j
