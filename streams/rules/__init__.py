"""Decides what counts as a valid rule file: YAML with line numbers, durations, safe expressions."""
