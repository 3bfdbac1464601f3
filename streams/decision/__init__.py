"""Decision: next-best-action by incremental value, or nothing, within the contact policy."""
