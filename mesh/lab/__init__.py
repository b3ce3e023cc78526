"""A lab on one machine: private Docker engines in network namespaces, and cachemesh nodes on them.

Used by the demo (`scripts/demo`) and by the integration tests. Needs root: it creates network
namespaces, a bridge, and runs `dockerd` processes. Addresses stay inside a private /24 on this machine.
Also: lab nodes on the in-memory engine with a lab-only control server (memnode), and the one-off
measurement of the peer API's HTTP overhead that the simulator's byte counts use (http_overhead).
"""
