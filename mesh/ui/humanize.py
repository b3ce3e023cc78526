"""Numbers and IDs as people read them, shared by the status page and `cachemesh status`."""

from __future__ import annotations


def size_text(n: int | float | None) -> str:
    """Bytes in decimal units: 512 B, 2.0 MB, 1.3 GB."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def short_id(image: str) -> str:
    """The 12 hex digits `docker images` shows."""
    return image[7:19] if image.startswith("sha256:") else image[:12]
