"""Numbers and IDs as people read them, shared by the status page and `cachemesh status`."""

from __future__ import annotations

from mesh.ui.status_doc import WarmupFigures


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


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def warmup_figures(w: WarmupFigures) -> dict[str, str]:
    """The warm-up's numbers as people read them (shared by the bar and the plain lines)."""
    done, left = w["images_done"], w["images_left"]
    given_up = f", {w['images_given_up']} failing" if w.get("images_given_up") else ""
    total = w["bytes_done"] + w["bytes_left"]
    return {
        "images": f"{done}/{done + left} images{given_up}",
        "bytes": f"{size_text(w['bytes_done'])}/{size_text(total)}",
        "left": f"{size_text(w['bytes_left'])} left",
        "rate": f"{size_text(w['rate'])}/s",
        "eta": f"ETA {eta_text(w['eta'])}",
    }
