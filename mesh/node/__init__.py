"""One node on one asyncio loop: wires the pure protocol to the engine, the peer API and
discovery; keeps local images in view, pulls what the planner asks for, and persists its identity.
It reads the core only through its read-only view, answers the peer server through PeerApi, and
hands the status surface a status document, a readiness check and metrics, nothing more."""
