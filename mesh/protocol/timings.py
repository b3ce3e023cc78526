"""The timings and sizes the protocol core runs on, as one small frozen value. Pure.

The core, the simulator and the node read the same numbers from here, so a test or a simulated
fleet passes a `Timings` instead of patching modules or building a whole operator config.
`Timings.lan()` is the default for a build fleet; `Timings.local()` the fast preset for tests and
the demo. The operator config (mesh.config) carries the one its preset picks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Timings:
    # --- failure detection (SWIM, Das et al. 2002; Lifeguard, HashiCorp 2018) ----------
    probe_interval: float = 1.0
    """Seconds between probes of one peer. Lower detects a dead peer sooner, but every node sends
    one probe (and its ack comes back) per interval, so the mesh's probe traffic grows with it."""
    probe_timeout: float = 0.5
    """Seconds to wait for a direct ack before asking others to probe indirectly. Must stay above
    the p99 round trip, or a slow-but-alive peer draws indirect probes on every round."""
    indirect_checks: int = 3
    """Peers asked to probe a silent node. More means fewer false suspicions when packets are lost
    on one path, at the cost of that many extra probes per silent node."""
    suspicion_mult: int = 4
    """Suspicion timeout floor = suspicion_mult * log10(n) * probe_interval (memberlist's
    SuspicionMult). Higher gives a suspect longer to refute, and delays declaring a real death."""
    suspicion_max_timeout_mult: int = 3
    """Timeout with no confirmations = this * floor; independent confirmations shrink it towards
    the floor. Higher protects a node that only one peer cannot reach."""
    dead_reap_time: float = 600.0
    """Seconds a dead or left peer is remembered (and retried for reconnection) before it is
    forgotten. Longer heals longer partitions without a seed; shorter forgets departed hosts sooner."""

    # --- dissemination -----------------------------------------------------------------
    gossip_interval: float = 0.2
    """Seconds between gossip rounds; a round sends pending rumours to `gossip_nodes` random peers.
    Lower spreads news faster, in more (smaller) messages."""
    gossip_nodes: int = 3
    """Fan-out of a gossip round. Higher spreads in fewer rounds, each round costs more messages."""
    gossip_to_dead_time: float = 30.0
    """Keep gossiping to a dead peer this long, so a falsely declared node hears it and refutes."""
    retransmit_mult: int = 4
    """Each rumour is sent ceil(retransmit_mult * log10(10 * (n + 1))) times by every node that
    holds it (formulas.retransmit_limit): higher reaches every node more surely under loss, with
    more copies of each rumour on the wire."""
    push_pull_interval: float = 10.0
    """Seconds between full-state syncs with one random peer (scaled up past 32 nodes). Syncs
    repair what gossip missed; more often repairs sooner and costs a state digest each time."""
    reconnect_interval: float = 5.0
    """Seconds between syncs with one random dead peer, so partitions heal without a seed."""
    tombstone_ttl: float = 600.0
    """Seconds a removed image's tombstone is kept. A peer that last synced longer ago than this
    gets a full manifest instead of a delta; longer keeps deltas small, at the memory of the tombstones."""

    # --- message sizes -----------------------------------------------------------------
    gossip_message_bytes: int = 8 * 1024
    """Budget for rumours in one gossip message: larger carries more per round, and is less
    likely to fit in a datagram."""
    rumour_inline_bytes: int = 1024
    """Manifest changes up to this size travel inside rumours; larger ones as a version notice that
    each node answers by pulling the delta once (a large change is not copied to every node
    retransmit-limit times)."""
    max_message_bytes: int = 1024 * 1024
    """Hard cap on one peer message; larger state is split across messages. The node's peer API
    refuses larger bodies (413), so this must be the same on every node."""

    @classmethod
    def lan(cls, **overrides: Any) -> Timings:
        """A build fleet on one LAN or VPC: 1,000 nodes, a few ms RTT."""
        return cls(**overrides)

    @classmethod
    def local(cls, **overrides: Any) -> Timings:
        """One machine, sub-millisecond RTT: tests and the demo converge in seconds, not minutes."""
        fast: dict[str, Any] = dict(
            probe_interval=0.5,
            probe_timeout=0.25,
            gossip_interval=0.1,
            push_pull_interval=2.0,
            reconnect_interval=1.0,
            dead_reap_time=60.0,
            gossip_to_dead_time=10.0,
        )
        return cls(**(fast | overrides))

    def replace(self, **changes: Any) -> Timings:
        return dataclasses.replace(self, **changes)
