"""The protocol, pure: wire format, SWIM membership, manifest gossip, anti-entropy, planner.

Nothing here does I/O. Every function takes the time and its inputs and returns messages and
decisions; mesh.node drives it over HTTP and mesh.sim over a simulated network. tests/test_layers.py
fails if anything here imports asyncio, aiohttp, docker, zeroconf or an I/O package of mesh.
"""
