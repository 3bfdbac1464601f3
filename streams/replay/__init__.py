"""Replay and shadow: a candidate rule set run over stored events or beside live traffic, and what it would change."""
