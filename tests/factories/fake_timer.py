"""A stand-in for machine_choice's timer: calibrations measured from a table, not the clock."""

from __future__ import annotations


class FakeTimer:
    """Seconds per option from a table; records which options were timed, in order."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds
        self.calls: list[str] = []

    def __call__(self, name, run):
        self.calls.append(name)
        return self.seconds[name]
