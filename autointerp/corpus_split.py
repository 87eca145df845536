"""A split name with an optional slice of rows, as `datasets` writes them: `train`, `train[:10000]`,
`train[1000:2000]`, `train[:1%]`, `train[10%:20%]`, `train[-500:]`.

Kept apart from the Hub reader (and free of heavy imports) because the run's settings check the
syntax when they are made, long before a dataset is opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPLIT = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")


@dataclass(frozen=True)
class SplitSlice:
    """A split and the rows of it to read, as written: bounds are row numbers or percentages
    (`"1%"`), negative ones counting from the end; None is the start or the end."""

    name: str
    start: str | None = None
    stop: str | None = None

    @property
    def needs_length(self) -> bool:
        return any(b is not None and (b.endswith("%") or b.startswith("-")) for b in (self.start, self.stop))

    def rows(self, n_rows: int | None) -> tuple[int, int | None]:
        """[first, stop) as row numbers (stop None: to the end); `n_rows` is needed for percentages
        and negative bounds (`needs_length`)."""

        def bound(text: str | None, default: int | None) -> int | None:
            if text is None:
                return default
            assert n_rows is not None or not self.needs_length
            if text.endswith("%"):
                value = round(int(text[:-1]) * (n_rows or 0) / 100)  # as datasets rounds a percent slice
            else:
                value = int(text)
            if value < 0:
                value += n_rows or 0
            return max(0, value if n_rows is None else min(value, n_rows))

        first = bound(self.start, 0) or 0
        return first, bound(self.stop, None)


def parse_split(text: str) -> SplitSlice:
    """`train`, `train[:1%]`, `test[100:200]`: the split and its slice; a ValueError for anything else."""
    m = _SPLIT.fullmatch(text.replace(" ", ""))
    if m is None:
        raise ValueError(
            f"--corpus-split {text!r} is not a split name with an optional slice, such as train, train[:10000] "
            "or train[:1%]"
        )
    for bound in (m.group("start"), m.group("stop")):
        if bound and bound.endswith("%") and not 0 <= int(bound[:-1].lstrip("-")) <= 100:
            raise ValueError(f"--corpus-split {text!r}: a percentage is between 0% and 100%")
    return SplitSlice(m.group("name"), m.group("start"), m.group("stop"))
