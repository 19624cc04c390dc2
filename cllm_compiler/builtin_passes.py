"""Imports the pass modules so that they register themselves."""
from .passes import allocate, calibrate, cast, codebook, distill, entropy, ggml, gptq, lowrank, nm, quant, reconstruct  # noqa: F401
