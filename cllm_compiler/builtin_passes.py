"""Imports the pass modules so that they register themselves."""
from .passes import calibrate, cast, codebook, entropy, gptq, quant  # noqa: F401
