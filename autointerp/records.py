"""The plain data that flows through a run: examples, latent records, explanations, scores.

These are deliberately plain dataclasses with no torch in sight, so every later stage (explainers,
scorers, results, report) can be tested with hand-made data and no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    """Token accounting of judge calls, summed over a stage."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls


@dataclass
class Explanation:
    latent: LatentId
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    failures: int = 0  # unparseable answers that were re-asked
    raw: str = ""  # the explainer's full last answer, kept for auditing


@dataclass
class Judgment:
    """What the judge said about one example. `prediction` is None when its answer was unusable."""

    window: int
    activating: bool  # ground truth: does this example belong to the positive class?
    prediction: bool | None
    probability: float | None  # P(yes) from logprobs, when the backend gives them
    max_activation: float
    quantile: int
    answer: str = ""
    error: str = ""
    text: str = ""  # the excerpt exactly as the judge saw it
    value: float | None = None  # a number measured per example, where a scorer has one (intervention: nats;
    # simulation: the excerpt's correlation; surprisal: its loss reduction)


@dataclass
class Score:
    latent: LatentId
    scorer: str
    metrics: dict[str, float | None]
    n_examples: int
    n_failed: int
    judgments: list[Judgment] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
