"""Shapes with areas and perimeters."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rectangle:
    width: float
    height: float

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError("sides must be positive")

    def area(self) -> float:
        return self.width * self.height

    def perimeter(self) -> float:
        return 2 * (self.width + self.height)

    def is_square(self) -> bool:
        return math.isclose(self.width, self.height)


class Square(Rectangle):
    def __init__(self, side: float) -> None:
        super().__init__(side, side)


@dataclass(frozen=True)
class Circle:
    radius: float

    def __post_init__(self) -> None:
        if self.radius <= 0:
            raise ValueError("radius must be positive")

    def area(self) -> float:
        return math.pi * self.radius**2

    def perimeter(self) -> float:
        return 2 * math.pi * self.radius


@dataclass(frozen=True)
class Triangle:
    a: float
    b: float
    c: float

    def __post_init__(self) -> None:
        sides = sorted((self.a, self.b, self.c))
        if sides[0] <= 0:
            raise ValueError("sides must be positive")
        if sides[0] + sides[1] <= sides[2]:
            raise ValueError("these sides do not close a triangle")

    def perimeter(self) -> float:
        return self.a + self.b + self.c

    def area(self) -> float:
        s = self.perimeter() / 2
        return math.sqrt(s * (s - self.a) * (s - self.b) * (s - self.c))

    def kind(self) -> str:
        if self.a == self.b == self.c:
            return "equilateral"
        if self.a == self.b or self.b == self.c or self.a == self.c:
            return "isosceles"
        return "scalene"


def total_area(shapes: list[Rectangle | Circle | Triangle]) -> float:
    total = 0.0
    for shape in shapes:
        total += shape.area()
    return total


def largest(shapes: list[Rectangle | Circle | Triangle]) -> Rectangle | Circle | Triangle | None:
    best = None
    for shape in shapes:
        if best is None or shape.area() > best.area():
            best = shape
    return best  # never tested: a missing line in the report
