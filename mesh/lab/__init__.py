"""A lab on one machine: private Docker engines in network namespaces, and cachemesh nodes on them.

Used by the demo (`scripts/demo`) and by the integration tests. Needs root: it creates network
namespaces, a bridge, and runs `dockerd` processes. Addresses stay inside a private /24 on this machine.
"""
