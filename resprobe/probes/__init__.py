"""One module per conjecture; each returns a long-format DataFrame."""
