"""The node's local OCI distribution endpoint: a router over a content store, with the mesh behind it."""
