"""Entry point for reading a model: HF folder, GGUF file, or a compiled .cllm artifact."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import LoadError
from .ir import Model


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def source_sha256(path: Path) -> str:
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + [path / "config.json", path / "compression.json"]:
        if f.exists():
            h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


def load_model(path: str | Path) -> Model:
    """Load a model for compilation or evaluation; dispatch on what `path` is."""
    p = Path(path)
    if not p.exists():
        raise LoadError(f"{p} does not exist", hint="give a Hugging Face model folder, a .gguf file or a .cllm artifact")
    if p.is_dir() and (p / "model.cllm").exists():
        from .container import read_container
        return read_container(p / "model.cllm")
    if p.suffix == ".cllm":
        from .container import read_container
        return read_container(p)
    if p.is_dir():
        from .load_hf import load_hf_dir
        model = load_hf_dir(p)
        if (p / "compression.json").is_file():  # a cllm-train export: its trained formats, not re-fitted
            from .load_compression import apply_compression
            model.source["compression"] = apply_compression(model, p)
    elif p.suffix == ".gguf" or _is_gguf(p):
        from .load_gguf import load_gguf
        model = load_gguf(p)
    else:
        raise LoadError(f"{p} is neither a model folder, a .gguf nor a .cllm file",
                        hint="give a Hugging Face model folder (config.json + *.safetensors) or a .gguf file")
    model.source.update(path=str(p.resolve()), sha256=source_sha256(p))
    return model


def _is_gguf(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"
