"""fedshield.common: errors, configuration, record conversion, atomic files, process environment."""
