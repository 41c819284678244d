import pytest

from shapes import Circle, Rectangle, Triangle


@pytest.fixture
def assorted():
    return [Rectangle(2, 3), Circle(1), Triangle(3, 4, 5)]
