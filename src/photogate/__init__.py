"""photogate: a self-hosted gateway in front of a fleet of GPU photo-enhancement servers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
