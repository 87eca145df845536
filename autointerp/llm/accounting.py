"""What a run's judge calls cost: token counts (`Usage`) times a price table the user supplies.

A price file maps model names (exactly as the judge reports `model`) to USD per million tokens:

    # prices.toml                          // prices.json
    ["gpt-4o-mini"]                        {"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6,
    prompt = 0.15                                           "cached_prompt": 0.075}}
    completion = 0.6
    cached_prompt = 0.075

`cached_prompt` (optional) is the price of prompt tokens a provider's prefix cache served; without
it they cost what other prompt tokens do. No prices are built in (they change); a model missing from
the table has no cost, and `describe` says so rather than printing $0.

`stage_costs` reads a results table (one row per latent, token columns per stage) and gives what
each stage costs per 1,000 latents: the figure that says what explaining a whole dictionary costs.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp.errors import AutointerpError
from autointerp.records import Usage

PRICE_KEYS = ("prompt", "completion", "cached_prompt")


class PriceTableError(AutointerpError):
    """A price file that cannot be read or does not have the expected shape."""


@dataclass(frozen=True)
class Price:
    """USD per million prompt (input) and completion (output) tokens, and per million prompt tokens
    served from the provider's prefix cache (None: the prompt price)."""

    prompt: float
    completion: float
    cached_prompt: float | None = None

    @property
    def cached(self) -> float:
        return self.prompt if self.cached_prompt is None else self.cached_prompt


@dataclass
class PriceTable:
    prices: dict[str, Price] = field(default_factory=dict)
    source: str = ""  # the file it was loaded from, for messages

    def get(self, model: str) -> Price | None:
        return self.prices.get(model)

    def __contains__(self, model: str) -> bool:
        return model in self.prices

    @classmethod
    def from_mapping(cls, data: Any, source: str = "") -> PriceTable:
        where = source or "price table"
        if not isinstance(data, dict):
            raise PriceTableError(f"{where}: expected a mapping of model name -> {{prompt, completion}}")
        prices = {}
        for model, entry in data.items():
            keys = set(entry) if isinstance(entry, dict) else set()
            if not isinstance(entry, dict) or not {"prompt", "completion"} <= keys <= set(PRICE_KEYS):
                raise PriceTableError(
                    f"{where}: model {model!r} needs the keys 'prompt' and 'completion' (USD per million "
                    f"tokens) and may have 'cached_prompt', got {entry!r}"
                )
            values: dict[str, float] = {}
            for key in PRICE_KEYS:
                if key not in entry:
                    continue
                v = entry[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise PriceTableError(f"{where}: model {model!r} {key} price must be a number >= 0, got {v!r}")
                values[key] = float(v)
            prices[str(model)] = Price(**values)
        return cls(prices, source)

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        """Read a `.json` or `.toml` price file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PriceTableError(f"price file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PriceTableError(f"price file {path} cannot be read: {e}") from None
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                data = json.loads(text)
            elif suffix == ".toml":
                if sys.version_info >= (3, 11):
                    import tomllib
                else:
                    import tomli as tomllib
                data = tomllib.loads(text)
            else:
                raise PriceTableError(f"price file {path}: expected a .json or .toml file")
        except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise PriceTableError(f"price file {path} cannot be parsed: {e}") from e
        return cls.from_mapping(data, str(path))


def cost(usage: Usage, model: str, prices: PriceTable | None) -> float | None:
    """USD cost of `usage` on `model`; None when there is no table or the model is not in it."""
    price = prices.get(model) if prices is not None else None
    if price is None:
        return None
    return (
        usage.computed_prompt_tokens * price.prompt
        + usage.cached_prompt_tokens * price.cached
        + usage.completion_tokens * price.completion
    ) / 1e6


def _tokens(usage: Usage) -> str:
    cached = f" ({usage.cached_prompt_tokens:,} cached)" if usage.cached_prompt_tokens else ""
    return f"{usage.prompt_tokens:,} prompt{cached} + {usage.completion_tokens:,} completion tokens"


def describe(usage: Usage, model: str, prices: PriceTable | None) -> str:
    """One line for a run summary: tokens, and the cost or why there is none."""
    tokens = f"{usage.calls:,} calls, {_tokens(usage)}"
    usd = cost(usage, model, prices)
    if usd is not None:
        return f"{model}: {tokens}, ${usd:.4f}"
    if prices is None:
        return f"{model}: {tokens} (no price table given: cost not computed)"
    where = f" in {prices.source}" if prices.source else ""
    return f"{model}: {tokens} (no price for model {model!r}{where}: cost unknown)"


@dataclass
class StageCost:
    """One stage of a run (the explainer, a scorer, a scorer's control) on one model, per 1,000 latents."""

    stage: str
    model: str
    latents: int  # latents whose row holds this stage's tokens
    usage: Usage  # summed over those latents (calls are not in the table: 0)
    price: Price | None

    def per_1000(self, tokens: int) -> float:
        return 1000 * tokens / self.latents if self.latents else 0.0

    @property
    def usd_per_1000(self) -> tuple[float, float, float] | None:
        """USD per 1,000 latents for (uncached prompt, cached prompt, completion) tokens; None without a price."""
        if self.price is None or not self.latents:
            return None
        u, p = self.usage, self.price
        return (
            self.per_1000(u.computed_prompt_tokens) * p.prompt / 1e6,
            self.per_1000(u.cached_prompt_tokens) * p.cached / 1e6,
            self.per_1000(u.completion_tokens) * p.completion / 1e6,
        )


def _int(value: Any) -> int:
    try:
        return 0 if value is None or value != value else int(value)  # NaN and pd.NA are no tokens
    except (TypeError, ValueError):
        return 0


def stage_costs(results: Any, prices: PriceTable | None) -> list[StageCost]:
    """What each stage of the run in `results` (a results.parquet DataFrame) costs per 1,000 latents.

    A stage is a column prefix with `<prefix>_prompt_tokens` (explainer, each scorer, each scorer's
    control); its model is the row's `explainer_model` / `<scorer>_judge_model`. Latents whose row has
    no tokens for a stage (a failed latent, a label that needed no LLM) are not counted for it.
    """
    import pandas as pd

    out: list[StageCost] = []
    columns = [str(c) for c in results.columns]
    for column in columns:
        if not column.endswith("_prompt_tokens") or column.endswith("_cached_prompt_tokens"):
            continue
        stage = column[: -len("_prompt_tokens")]
        if stage == "explainer":
            model_column = "explainer_model"
        else:
            owner = stage[: -len("_control")] if stage.endswith("_control") else stage
            model_column = f"{owner}_judge_model"
        if model_column not in columns:
            continue
        by_model: dict[str, tuple[int, Usage]] = {}
        for _, row in results.iterrows():
            if pd.isna(row[column]) or pd.isna(row[model_column]):
                continue
            n, usage = by_model.get(str(row[model_column]), (0, Usage()))
            usage.add(
                Usage(
                    prompt_tokens=_int(row[column]),
                    completion_tokens=_int(row.get(f"{stage}_completion_tokens")),
                    cached_prompt_tokens=_int(row.get(f"{stage}_cached_prompt_tokens")),
                )
            )
            by_model[str(row[model_column])] = (n + 1, usage)
        for model, (n, usage) in by_model.items():
            if usage.prompt_tokens or usage.completion_tokens:
                out.append(StageCost(stage, model, n, usage, prices.get(model) if prices is not None else None))
    return out


def describe_costs(costs: list[StageCost], prices: PriceTable | None) -> list[str]:
    """Lines for a run summary: per stage, tokens and USD per 1,000 latents, uncached and cached apart."""
    if not costs:
        return []
    source = f" (prices from {prices.source})" if prices is not None and prices.source else ""
    lines = [f"per 1,000 latents{source}:"]
    total = 0.0
    priced = True
    for c in costs:
        u = c.usage
        tokens = (
            f"{c.per_1000(u.computed_prompt_tokens):,.0f} uncached + {c.per_1000(u.cached_prompt_tokens):,.0f} cached "
            f"prompt, {c.per_1000(u.completion_tokens):,.0f} completion tokens"
        )
        usd = c.usd_per_1000
        if usd is None:
            priced = False
            money = "no price" if prices is not None else "no price table given"
        else:
            total += sum(usd)
            money = f"${sum(usd):.4f} (${usd[0]:.4f} uncached + ${usd[1]:.4f} cached prompt + ${usd[2]:.4f} completion)"
        lines.append(f"  {c.stage} ({c.model}, {c.latents} latents): {tokens}; {money}")
    if priced and prices is not None:
        lines.append(f"  all stages: ${total:.4f} per 1,000 latents")
    return lines
