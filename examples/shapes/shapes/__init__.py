"""A tiny geometry package: the example project measured by pytest-distcov."""

from .geometry import Circle, Rectangle, Square, Triangle, total_area
from .palette import describe, mix

__all__ = ["Circle", "Rectangle", "Square", "Triangle", "describe", "mix", "total_area"]
