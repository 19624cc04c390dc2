"""Compression-aware training (`cllm_compiler.training`): QAT on the compiler's own formats,
rate penalties, distillation, and an export `cllm-compile` reads without re-fitting.
See docs/training.md."""
