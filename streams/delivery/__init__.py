"""Delivery: turns decisions to act into interactions on the right channel."""
