"""The library's version, in a module of its own: a module that says it imports this one, not the package's
``__init__`` (which imports the data layer, and so once closed an import circle)."""

__version__ = "0.1.0"
