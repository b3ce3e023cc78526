"""What trust classes cost: signing and verifying one tag claim (µs), and the bytes a signature
adds to a manifest entry on the wire.

    PYTHONPATH=. .venv/bin/python scripts/bench_trust.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.net.trust_keys import TrustKeys, write_pair
from mesh.protocol import oci
from mesh.protocol.wire import Entry, ManifestUpdate, encoded_size

ROUNDS = 2000
IMAGE = "sha256:" + "ab" * 32


def _per_call_us(fn: object, rounds: int) -> float:
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for stamp in range(rounds):
            fn(stamp)  # type: ignore[operator]
        samples.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_pair(Path(tmp) / "k", Path(tmp) / "p")
        keys = TrustKeys.load("default", str(Path(tmp) / "k"), str(Path(tmp) / "p"))
    assert keys is not None
    cases = {
        "image entry, 1 tag": ("app:main",),
        "image entry, 3 tags": ("app:main", "app:41", "registry.example/app:main"),
        "registry entry, 1 tag": oci.announce("sha256:" + "cd" * 32, {"cache/app:main": 1_765_000_000_000}),
    }
    for name, tags in cases.items():
        sigs: dict[int, bytes] = {}

        def sign(stamp: int, tags: tuple[str, ...] = tags, sigs: dict[int, bytes] = sigs) -> None:
            sigs[stamp] = keys.sign("node-1234567890abcdef", IMAGE, tags, stamp)

        sign_us = _per_call_us(sign, ROUNDS)

        def verify(stamp: int, tags: tuple[str, ...] = tags, sigs: dict[int, bytes] = sigs) -> None:
            assert keys.verify("node-1234567890abcdef", IMAGE, tags, stamp, sigs[stamp])

        verify_us = _per_call_us(verify, ROUNDS)
        plain = encoded_size(ManifestUpdate("node", 1, 2, (Entry(IMAGE, tags, 2),)))
        signed = encoded_size(ManifestUpdate("node", 1, 2, (Entry(IMAGE, tags, 2, sigs[0]),)))
        print(
            f"{name:24s} sign {sign_us:6.1f} µs  verify {verify_us:6.1f} µs  "
            f"entry {plain} -> {signed} bytes (+{signed - plain})"
        )


if __name__ == "__main__":
    main()
