"""cllm: a compiler for compressible LLMs.

Stages live in sibling folders mapped into this namespace: `cllm_compiler.passes`,
`.codecs`, `.backends`, `.targets`, `.training`.
"""
__version__ = "0.1.0"
