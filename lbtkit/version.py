"""lbtkit's version, in a module of its own so that any layer can read it without importing the
package's public API (``lbtkit/__init__.py`` imports the config and the models)."""

__version__ = "0.1.0"
