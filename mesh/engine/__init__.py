"""The local Docker Engine: the interface (base), the Engine API adapter (docker_api), an
in-memory double (fake), and streaming filters over `docker save` tars (tarstream)."""
