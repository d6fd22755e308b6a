"""Tables (CSV, JSON with provenance) and plots (PNG + SVG)."""
from .tables import provenance, write_json, write_table

__all__ = ["provenance", "write_json", "write_table"]
