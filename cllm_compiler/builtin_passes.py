"""Imports the pass modules so that they register themselves."""
from .passes import calibrate, cast, entropy, gptq, quant  # noqa: F401
