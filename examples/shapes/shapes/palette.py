"""Colours for shapes."""

from __future__ import annotations

PRIMARY = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def mix(first: str, second: str) -> tuple[int, int, int]:
    try:
        a, b = PRIMARY[first], PRIMARY[second]
    except KeyError as exc:
        raise ValueError(f"unknown colour {exc.args[0]!r}") from None
    return (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]))


def describe(rgb: tuple[int, int, int]) -> str:
    r, g, b = rgb
    if r == g == b:
        return "grey" if 0 < r < 255 else ("white" if r else "black")
    if r >= g and r >= b:
        return "reddish"
    if g >= b:
        return "greenish"
    return "bluish"


def brightness(rgb: tuple[int, int, int]) -> float:
    # Never called by the tests: a 0 % function in the report.
    return sum(rgb) / (3 * 255)
