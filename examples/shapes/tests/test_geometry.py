import math

import pytest

from shapes import Circle, Rectangle, Square, Triangle, total_area


@pytest.mark.parametrize(("w", "h", "area"), [(1, 1, 1), (2, 3, 6), (0.5, 4, 2)])
def test_rectangle_area(w, h, area):
    assert Rectangle(w, h).area() == area


def test_rectangle_perimeter():
    assert Rectangle(2, 3).perimeter() == 10


def test_square_is_square():
    assert Square(2).is_square()
    assert not Rectangle(2, 3).is_square()


@pytest.mark.parametrize("bad", [(0, 1), (1, -1)])
def test_rectangle_rejects_bad_sides(bad):
    with pytest.raises(ValueError, match="positive"):
        Rectangle(*bad)


def test_circle():
    c = Circle(2)
    assert math.isclose(c.area(), 4 * math.pi)
    assert math.isclose(c.perimeter(), 4 * math.pi)


@pytest.mark.parametrize(
    ("sides", "kind"), [((3, 3, 3), "equilateral"), ((3, 3, 5), "isosceles"), ((3, 4, 5), "scalene")]
)
def test_triangle_kind(sides, kind):
    assert Triangle(*sides).kind() == kind


def test_triangle_area():
    assert math.isclose(Triangle(3, 4, 5).area(), 6)


def test_triangle_rejects_open_sides():
    with pytest.raises(ValueError, match="close"):
        Triangle(1, 2, 10)


def test_total_area(assorted):
    assert math.isclose(total_area(assorted), 6 + math.pi + 6)
