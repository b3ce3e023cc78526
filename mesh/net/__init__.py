"""Peer-to-peer HTTP: request signing (auth), the shared contract (paths, headers, caps), the
server and the client. Everything between nodes goes through here."""
