"""Reports on what the engine's decisions earned, read from engage.attributions."""
