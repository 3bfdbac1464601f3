"""The web channel: what browsers send (the collector) and, later, what they are shown."""
