"""The package version, importable without importing the package face (``qlevents``)."""

__version__ = "0.1.0"
