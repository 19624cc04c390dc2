"""Imports the pass modules so that they register themselves."""
from .passes import cast, entropy, quant  # noqa: F401
