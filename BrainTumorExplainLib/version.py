"""The library's version, in a module of its own so that any module can say it without importing the package
(whose __init__ imports the data layer)."""

__version__ = "0.1.0"
