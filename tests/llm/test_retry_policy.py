"""The one retry policy of the HTTP callers (judge and service client): what is retried, how long it waits,
when it gives up. Jitter is fixed by passing the extremes of its range."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from autointerp.retry_policy import RetryPolicy, parse_retry_after


def lowest(low: float, high: float) -> float:
    return low


def highest(low: float, high: float) -> float:
    return high


def test_retry_after_in_seconds_http_date_and_milliseconds():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "7"}, now) == 7.0
    assert parse_retry_after({"retry-after": formatdate(now + 90, usegmt=True)}, now) == pytest.approx(90, abs=1)
    assert parse_retry_after({"retry-after": formatdate(now - 90, usegmt=True)}, now) == 0.0  # already past
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, now) == 1.5  # the finer one wins
    for bad in ("later", "-1", "nan", "inf"):
        assert parse_retry_after({"retry-after": bad}, now) is None


def test_retry_after_counts_only_where_the_status_promises_it():
    headers = {"retry-after": "5"}
    assert RetryPolicy.retry_after(429, headers) == 5.0
    assert RetryPolicy.retry_after(503, headers) == 5.0
    assert RetryPolicy.retry_after(500, headers) is None


def test_which_statuses_are_retried():
    for status in (408, 429, 500, 502, 503, 504, 507, 599):
        assert RetryPolicy.retried(status), status
    for status in (400, 401, 403, 404, 409, 422, 501):
        assert not RetryPolicy.retried(status), status


def test_backoff_doubles_up_to_its_cap_with_bounded_jitter():
    low = RetryPolicy(backoff_initial=1.0, backoff_max=10.0, uniform=lowest)
    high = RetryPolicy(backoff_initial=1.0, backoff_max=10.0, uniform=highest)
    assert [low.wait(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert [high.wait(n) for n in range(6)] == [2.0, 3.0, 5.0, 9.0, 10.0, 10.0]  # jitter never passes the cap


def test_the_servers_wait_replaces_the_backoff_and_a_floor_holds():
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=10.0, uniform=highest)
    assert policy.wait(0, retry_after=20.0) == 21.0  # the server's word (over the cap), jitter at most 1 s
    assert policy.wait(0, retry_after=2.0) == pytest.approx(2.2)  # jitter at most a tenth of a short wait
    assert RetryPolicy(uniform=lowest).wait(0, at_least=300.0) == 300.0  # a timed-out request waits as long


def test_gives_up_after_the_last_attempt():
    policy = RetryPolicy(max_attempts=3, uniform=lowest)
    assert policy.next_wait(0, elapsed=0.0) == 1.0
    assert policy.next_wait(1, elapsed=0.0) == 2.0
    assert policy.next_wait(2, elapsed=0.0) is None


def test_gives_up_at_once_when_the_server_asks_for_too_long():
    policy = RetryPolicy(max_attempts=10, max_retry_after=60.0, uniform=lowest)
    assert policy.next_wait(0, elapsed=0.0, retry_after=60.0) == 60.0
    assert policy.next_wait(0, elapsed=0.0, retry_after=3600.0) is None
    assert policy.refuses(3600.0) and not policy.refuses(None)


def test_gives_up_when_the_wait_would_pass_the_time_bound():
    policy = RetryPolicy(max_attempts=10, backoff_initial=4.0, backoff_max=4.0, max_total_s=10.0, uniform=lowest)
    assert policy.next_wait(0, elapsed=5.0) == 4.0  # 9 s: still inside
    assert policy.next_wait(0, elapsed=6.0) is None  # 10 s: would reach the bound
    assert RetryPolicy(max_attempts=10, uniform=lowest).next_wait(0, elapsed=1e6) == 1.0  # no bound by default


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
