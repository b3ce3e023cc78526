"""What people and scrapers see: the status page and JSON API, CLI tables, Prometheus metrics."""
