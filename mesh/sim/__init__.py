"""A deterministic simulator: the real protocol core over a simulated network and clock, and the
fleet scenarios that measure it (scripts/simulate.py)."""
