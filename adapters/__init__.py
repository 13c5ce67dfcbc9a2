"""Backend drivers. Each imports its own SDK lazily, behind an extra."""
