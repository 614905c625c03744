"""The installed distribution's version (one source: pyproject.toml)."""

from importlib.metadata import version

__all__ = ["__version__"]

__version__ = version("framestream")
