"""The sign-in throttle: a few wrong tokens a window per client, then a wait that ends when the window moves on."""

from __future__ import annotations

from conductor_mcp.surfaces.web.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_waits_after_its_tries_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    throttle = Throttle(tries=3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
        clock.now += 10
    assert throttle.retry_after("a") == 30  # the first failure, at 1000, leaves the window at 1060
    assert throttle.retry_after("b") is None  # another client is not held up
    clock.now += 30
    assert throttle.retry_after("a") is None  # one try again, not three
    throttle.failed("a")
    assert throttle.retry_after("a") == 10


def test_memory_is_bounded_by_clients_and_tries() -> None:
    clock = Clock()
    throttle = Throttle(tries=2, window_s=60, clients=3, clock=clock)
    for i in range(10):
        throttle.failed(f"c{i}")
        throttle.failed("busy")  # kept: the most recent
    assert len(throttle._failures) == 3 and "busy" in throttle._failures
    assert len(throttle._failures["busy"]) == 2 and throttle.retry_after("busy") == 60
