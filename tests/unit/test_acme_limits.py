"""ACME rate-limit decisions (ca.acme.limits.decide): a sliding hour, Retry-After in seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ca.acme.limits import WINDOW, Verdict, decide, rate_limited

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


def test_zero_means_no_limit():
    assert decide(0, [NOW] * 1000, NOW).allowed


def test_under_the_limit_is_allowed():
    verdict = decide(3, [ago(minutes=1), ago(minutes=2)], NOW)
    assert verdict == Verdict(True, 0, 2)


def test_at_the_limit_waits_for_the_oldest_counted_row_to_leave_the_window():
    verdict = decide(2, [ago(minutes=10), ago(minutes=40)], NOW)
    assert not verdict.allowed
    assert verdict.retry_after == 20 * 60  # the 40-minute-old row leaves in 20 minutes


def test_rows_outside_the_window_do_not_count():
    recent = [ago(minutes=5), ago(hours=1), ago(hours=2)]  # exactly one hour old: gone
    assert decide(2, recent, NOW).allowed


def test_over_the_limit_waits_until_one_more_fits():
    # Limit lowered to 2 with 4 rows in the hour: one more fits once the 2nd newest leaves.
    recent = [ago(minutes=50), ago(minutes=1), ago(minutes=30), ago(minutes=45)]
    verdict = decide(2, recent, NOW)
    assert not verdict.allowed and verdict.counted == 4
    assert verdict.retry_after == 30 * 60


def test_retry_after_is_rounded_up_and_at_least_one_second():
    assert decide(1, [ago(minutes=59, seconds=59.5)], NOW).retry_after == 1
    assert decide(1, [ago(minutes=30, seconds=0.25)], NOW).retry_after == 30 * 60


def test_future_rows_are_ignored():
    assert decide(1, [NOW + timedelta(seconds=5)], NOW).allowed


def test_rate_limited_problem_carries_retry_after():
    err = rate_limited(Verdict(False, 17, 3), "at most 3 orders per hour")
    assert err.kind == "rateLimited" and err.status == 429
    assert err.headers == {"Retry-After": "17"}
    assert "17 s" in err.detail


def test_window_is_one_hour():
    assert WINDOW == timedelta(hours=1)
