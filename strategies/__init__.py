"""fedshield.strategies: strategy names -> Flower strategies, and the recording wrapper."""
