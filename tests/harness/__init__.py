"""Real parts for integration tests: private dockerds, network-namespace hosts, node processes."""
