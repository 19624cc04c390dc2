"""Backends (`cllm_compiler.backends`): lower the IR to something a device runs."""
