"""Model descriptions, presets and weight readers."""
