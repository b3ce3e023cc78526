"""Settings written back as text read back as the same value: help text shows defaults this way."""

import pytest

from mesh import values
from mesh.hostport import DEFAULT_PORT, parse_hostport


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "none"),
        (20 * 1000**3, "20GB"),
        (500 * 1024**2, "500MiB"),
        (1536, "1536B"),
        (2048, "2KiB"),
        (1_500_000_000, "1500MB"),
        (7, "7B"),
    ],
)
def test_a_size_is_written_in_the_largest_unit_that_divides_it(size: int, text: str):
    assert values.format_size(size) == text
    assert values.parse_size(text) == size


@pytest.mark.parametrize(("value", "text"), [(0.0, "off"), (0.85, "85%"), (0.7, "70%"), (0.125, "12.5%")])
def test_a_fraction_is_written_as_a_percentage(value: float, text: str):
    assert values.format_fraction(value) == text
    assert values.parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize(("value", "text"), [(True, "on"), (False, "off")])
def test_a_switch_is_on_or_off(value: bool, text: str):
    assert values.format_bool(value) == text and values.parse_bool(text) is value


@pytest.mark.parametrize(("items", "text"), [(("a:1", "b"), "a:1,b"), (("cache/*",), "cache/*")])
def test_a_list_is_comma_separated(items: tuple[str, ...], text: str):
    assert values.format_list(items) == text and values.parse_list(text) == items


def test_an_empty_list_shows_as_none():
    assert values.format_list(()) == "none"


@pytest.mark.parametrize("seconds", [10.0, 2.5, 0.2])
def test_plain_seconds_read_back_as_floats(seconds: float):
    assert float(values.format_seconds(seconds)) == seconds


@pytest.mark.parametrize("seconds", [0.5, 90.0, 1800.0, 5400.0])
def test_durations_read_back(seconds: float):
    assert values.parse_duration(values.format_duration(seconds)) == seconds


def test_a_seed_without_a_port_means_the_peer_port():
    assert parse_hostport("seed", default_port=DEFAULT_PORT) == ("seed", 7611)
