"""Imports the pass modules so that they register themselves."""
from .passes import calibrate, cast, codebook, entropy, gptq, nm, quant  # noqa: F401
