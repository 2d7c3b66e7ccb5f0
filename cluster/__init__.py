"""The cluster: coordinator, catalog, placement, metrics and the CLI."""
