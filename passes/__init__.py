"""Compression passes (`cllm_compiler.passes`): one module per pass, each registered by name."""
