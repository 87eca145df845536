"""What a run's judge calls cost: token counts (`Usage`) times a price table the user supplies.

A price file maps model names (exactly as the judge reports `model`) to USD per million tokens:

    # prices.toml                          // prices.json
    ["gpt-4o-mini"]                        {"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}}
    prompt = 0.15
    completion = 0.6

No prices are built in (they change); a model missing from the table has no cost, and `describe`
says so rather than printing $0.
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


class PriceTableError(AutointerpError):
    """A price file that cannot be read or does not have the expected shape."""


@dataclass(frozen=True)
class Price:
    """USD per million prompt (input) and completion (output) tokens."""

    prompt: float
    completion: float


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
            if not isinstance(entry, dict) or set(entry) != {"prompt", "completion"}:
                raise PriceTableError(
                    f"{where}: model {model!r} needs exactly the keys 'prompt' and 'completion' "
                    f"(USD per million tokens), got {entry!r}"
                )
            values = []
            for key in ("prompt", "completion"):
                v = entry[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise PriceTableError(f"{where}: model {model!r} {key} price must be a number >= 0, got {v!r}")
                values.append(float(v))
            prices[str(model)] = Price(*values)
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
    return (usage.prompt_tokens * price.prompt + usage.completion_tokens * price.completion) / 1e6


def describe(usage: Usage, model: str, prices: PriceTable | None) -> str:
    """One line for a run summary: tokens, and the cost or why there is none."""
    tokens = f"{usage.calls:,} calls, {usage.prompt_tokens:,} prompt + {usage.completion_tokens:,} completion tokens"
    usd = cost(usage, model, prices)
    if usd is not None:
        return f"{model}: {tokens}, ${usd:.4f}"
    if prices is None:
        return f"{model}: {tokens} (no price table given: cost not computed)"
    where = f" in {prices.source}" if prices.source else ""
    return f"{model}: {tokens} (no price for model {model!r}{where}: cost unknown)"
