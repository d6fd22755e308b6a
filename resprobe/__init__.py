"""resprobe: probe why residual networks work."""
__version__ = "0.1.0"
