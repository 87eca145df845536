"""When an HTTP call that failed is sent again, and after how long: the one policy of every HTTP caller.

The OpenAI-compatible judge (llm/openai_compat.py) and the service's client (client.py) both follow it;
each keeps only how it sends a request and how it names a failure. Decided here, once:

- which answers are worth another try: a dropped connection or a timeout (the caller says so), HTTP 408,
  429 and 5xx but 501 (a server that does not implement the route will not start to);
- how long to wait: exponential backoff from `backoff_initial`, capped at `backoff_max`, with jitter so
  that many callers turned away together do not come back together; on 429 and 503 a `Retry-After`
  (seconds, an HTTP date, or OpenAI's `retry-after-ms`) replaces the backoff for that wait;
- when to give up: after `max_attempts`, at once when the server asks for more than `max_retry_after`
  seconds (a daily quota will not clear in a minute), and when the time since the first attempt plus the
  coming wait would reach `max_total_s`.

It imports nothing of the project, so any floor can use it.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
RETRY_AFTER_STATUS = frozenset({429, 503})  # the statuses whose Retry-After header is a promise


def parse_retry_after(headers: Mapping[str, Any] | None, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent/bad."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms) / 1000.0
            if math.isfinite(v) and v >= 0:
                return v
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    try:
        v = float(value)
        return v if math.isfinite(v) and v >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now_ts = time.time() if now is None else now
    return max(0.0, when.timestamp() - now_ts)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one caller retries; `next_wait` is the whole decision."""

    max_attempts: int = 6
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    max_retry_after: float = 60.0
    # a server's wait beyond max_retry_after: refused (give up at once; a judge asked to wait an hour should
    # fail the call) or cut to max_retry_after (the service's client: its queue can ask for minutes, and the
    # client polls it again sooner rather than give up)
    cap_retry_after: bool = False
    max_total_s: float | None = None  # None: no bound on the time, only on the attempts
    # the jitter source (a test passes a fixed one): uniform(low, high)
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_initial < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ValueError("max_attempts must be >= 1 and the backoff and max_retry_after not negative")

    @staticmethod
    def retried(status: int) -> bool:
        """Whether an HTTP status is worth another try (a transport failure always is)."""
        return status in RETRY_STATUS

    @staticmethod
    def retry_after(status: int, headers: Mapping[str, Any] | None) -> float | None:
        """The wait a failed answer asks for, read only where the status makes it a promise."""
        return parse_retry_after(headers) if status in RETRY_AFTER_STATUS else None

    def refuses(self, retry_after: float | None) -> bool:
        """The server asks for a longer wait than this caller will sit through: give up at once."""
        return not self.cap_retry_after and retry_after is not None and retry_after > self.max_retry_after

    def wait(self, attempt: int, retry_after: float | None = None, at_least: float = 0.0) -> float:
        """The wait after the `attempt`-th failure (from 0): the server's own with a little jitter, else the
        jittered backoff, and never less than `at_least` (a timed-out request leaves the server busy)."""
        if retry_after is not None:
            retry_after = min(retry_after, self.max_retry_after) if self.cap_retry_after else retry_after
            return retry_after + self.uniform(0, min(1.0, 0.1 * retry_after))
        base = min(self.backoff_max, self.backoff_initial * (2**attempt))
        wait = min(self.backoff_max, base + self.uniform(0, self.backoff_initial))
        return max(wait, at_least)

    def next_wait(
        self, attempt: int, elapsed: float, retry_after: float | None = None, at_least: float = 0.0
    ) -> float | None:
        """The wait before sending again after the `attempt`-th failure (from 0), `elapsed` seconds after the
        first attempt began; None: give up now."""
        if self.refuses(retry_after) or attempt + 1 >= self.max_attempts:
            return None
        wait = self.wait(attempt, retry_after, at_least)
        if self.max_total_s is not None and elapsed + wait >= self.max_total_s:
            return None
        return wait
