"""Compression-aware training (`cllm_compiler.training`): QAT, rate penalties, distillation.

Nothing lives here yet: issue 8 builds it on the formats in `cllm_compiler.reprs` and the
quantizers in `cllm_compiler.passes` so training and export share one implementation.
"""
