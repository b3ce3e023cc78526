"""cachemesh: a peer-to-peer gossip mesh that spreads Docker build cache across build hosts."""

__version__ = "0.1.0"
