"""anchordiff package."""
