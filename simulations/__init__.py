"""fedshield.simulations."""
