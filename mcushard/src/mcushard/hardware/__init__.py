"""Hardware specs and presets."""
