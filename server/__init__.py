"""fedshield.server."""
