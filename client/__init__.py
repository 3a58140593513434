"""fedshield.client."""
