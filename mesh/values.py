"""The text forms of settings: booleans, lists, durations, sizes and fractions, read and written
back. Pure. Each `format_*` is the inverse of its `parse_*`, so help text can show a default in
the same form an operator would type it."""

from __future__ import annotations

import re


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def format_bool(value: bool) -> str:
    return "on" if value else "off"


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def format_list(values: tuple[str, ...]) -> str:
    return ",".join(values) if values else "none"


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(raw: str) -> float:
    """'90', '90s', '10m', '1h', '1h30m' -> seconds; 'off' or '0' -> 0 (none)."""
    text = raw.strip().lower()
    if text in ("off", "none", "0"):
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"expected a duration like 90s, 10m or 1h (or off), got {raw!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Seconds as parse_duration reads them back, in the largest whole units: 600 -> '10m'."""
    whole = round(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)


def format_seconds(seconds: float) -> str:
    """A plain number of seconds, as `float` reads it back: 10.0 -> '10'."""
    return f"{seconds:g}"


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip


def parse_size(raw: str) -> int:
    """'20GB', '500MiB', '1.5g', '1048576' -> bytes; '0' or 'off' -> 0 (no budget)."""
    text = raw.strip().lower().replace(" ", "")
    if text in ("off", "none", "0"):
        return 0
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    if unit not in _SIZE_UNITS or not number:
        raise ValueError(f"expected a size such as 20GB or 500MiB, got {raw!r}")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a size such as 20GB or 500MiB, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"a size cannot be negative: {raw!r}")
    return int(value * _SIZE_UNITS[unit])


def format_size(size: int) -> str:
    """Bytes in the largest unit that divides them: 20_000_000_000 -> '20GB'; 0 -> 'none'."""
    if size == 0:
        return "none"
    for unit in ("TiB", "TB", "GiB", "GB", "MiB", "MB", "KiB", "kB"):
        scale = _SIZE_UNITS[unit.lower()]
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def parse_fraction(raw: str) -> float:
    """'85%' or '0.85' -> 0.85; 'off' -> 0."""
    text = raw.strip().lower()
    if text in ("off", "none", "0", "0%"):
        return 0.0
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"expected a percentage such as 85%, got {raw!r}") from None
    if not 0 < value < 1:
        raise ValueError(f"expected a percentage between 0% and 100%, got {raw!r}")
    return value


def format_fraction(value: float) -> str:
    """0.85 -> '85%'; 0 -> 'off'."""
    return f"{value * 100:g}%" if value else "off"
