"""Finding peers: seed lists re-resolved through DNS, mDNS on the local link, and which of this
host's addresses peers should dial."""
