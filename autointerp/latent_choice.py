"""Which latents of each hookpoint a run explains and scores.

A large dictionary (32k-131k latents per hookpoint) is rarely done whole: `--latents` names indices
and half-open ranges (`3,17,100:200` is 3, 17 and 100..199), `--max-latents N` takes the first N
latents that fire often enough, and `--sample-latents N` a random sample of N of them, drawn from the
run's seed and the hookpoint's name, so the same command picks the same latents and each hookpoint
gets its own draw. The choice applies to every hookpoint of the run alike.

Ranges stay ranges in the config (`"100:200"`), so config.json does not list a hundred thousand
indices; `expand_latents` turns them into indices where they are used. Nothing heavy is imported
here: the config module parses `--latents` with it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

from autointerp.errors import ConfigError

LatentSpec = list[int | str]  # indices, and "START:STOP" ranges (STOP excluded)

_RANGE = re.compile(r"(\d+):(\d+)")


class LatentSpecError(ConfigError):
    """A `--latents` value that is not indices and START:STOP ranges."""


def parse_latents(text: str) -> LatentSpec:
    """`3,17,100:200` -> [3, 17, "100:200"]; ranges must not be empty."""
    out: LatentSpec = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if ":" in part:
            out.append(_range(part))
            continue
        try:
            index = int(part)
        except ValueError:
            raise LatentSpecError(
                f"expected latent indices and ranges like 3,17,100:200, got {part!r} in {text!r}"
            ) from None
        if index < 0:
            raise LatentSpecError(f"latent indices start at 0, got {index}")
        out.append(index)
    return out


def _range(part: str) -> str:
    m = _RANGE.fullmatch(part)
    if not m:
        raise LatentSpecError(f"a latent range is START:STOP with both numbers given, like 0:1000, got {part!r}")
    start, stop = int(m.group(1)), int(m.group(2))
    if stop <= start:
        raise LatentSpecError(f"the latent range {part} is empty: STOP is excluded and must be above START")
    return f"{start}:{stop}"


def check_spec(spec: Sequence[int | str]) -> None:
    """Raise LatentSpecError for an item that is neither an index nor a well-formed range (a library
    caller's list, or a hand-edited config.json)."""
    for item in spec:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise LatentSpecError(f"latents are indices and 'START:STOP' ranges, not {item!r}")
        if isinstance(item, int) and item < 0:
            raise LatentSpecError(f"latent indices start at 0, got {item}")
        if isinstance(item, str):
            _range(item)


def expand_latents(spec: Sequence[int | str] | None) -> list[int]:
    """The indices a spec names, in its order, each once."""
    out: dict[int, None] = {}
    for item in spec or []:
        if isinstance(item, str):
            start, stop = map(int, _range(item).split(":"))
            out.update(dict.fromkeys(range(start, stop)))
        else:
            out[int(item)] = None
    return list(out)


def out_of_range(spec: Sequence[int | str] | None, num_latents: int) -> list[str]:
    """The items of a spec that reach beyond a dictionary of `num_latents` latents, as written."""
    bad = []
    for item in spec or []:
        stop = int(_range(item).split(":")[1]) if isinstance(item, str) else int(item) + 1
        if stop > num_latents:
            bad.append(str(item))
    return bad


def choose_latents(
    eligible: Sequence[int],
    *,
    hookpoint: str,
    latents: Sequence[int | str] | None,
    max_latents: int | None,
    sample_latents: int | None,
    seed: int,
) -> list[int]:
    """The latents of one hookpoint to do, in index order.

    `eligible`: the latents that fire often enough, in index order. Named `latents` are taken as given
    (an ineligible one is still done, and its row says why it was skipped) unless `sample_latents` asks
    for a sample: then the sample is drawn from the named latents that are eligible. Without names,
    `sample_latents` draws from every eligible latent, else the first `max_latents` are taken (None:
    all of them).
    """
    pool = list(eligible)
    if latents:
        named = expand_latents(latents)
        if not sample_latents:
            return named
        allowed = set(named)
        pool = [i for i in pool if i in allowed]
    if sample_latents:
        if sample_latents >= len(pool):
            return sorted(pool)
        import numpy as np

        rng = np.random.default_rng([seed, zlib.crc32(hookpoint.encode()), zlib.crc32(b"sample-latents")])
        return sorted(int(pool[i]) for i in rng.choice(len(pool), size=sample_latents, replace=False))
    return pool if max_latents is None else pool[:max_latents]
