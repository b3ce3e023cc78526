"""One node on one asyncio loop: wires the pure protocol to the engine, the peer API and
discovery; keeps local images in view, pulls what the planner asks for, and persists its identity."""
