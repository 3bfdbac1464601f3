"""Operator tools around the engine: the local broker, the traffic simulator, the demo loop and the bench."""
