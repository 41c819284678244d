import pytest

from shapes import describe, mix


@pytest.mark.parametrize(
    ("a", "b", "rgb"),
    [("red", "green", (255, 255, 0)), ("green", "blue", (0, 255, 255)), ("red", "red", (255, 0, 0))],
)
def test_mix(a, b, rgb):
    assert mix(a, b) == rgb


def test_mix_unknown():
    with pytest.raises(ValueError, match="purple"):
        mix("red", "purple")


@pytest.mark.parametrize(
    ("rgb", "name"),
    [((0, 0, 0), "black"), ((255, 255, 255), "white"), ((9, 9, 9), "grey"), ((200, 10, 10), "reddish"),
     ((10, 200, 10), "greenish"), ((10, 10, 200), "bluish")],
)
def test_describe(rgb, name):
    assert describe(rgb) == name
