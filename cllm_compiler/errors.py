"""One error hierarchy for the whole compiler.

Every error carries a message, optionally the tensor and byte offset involved, and a
hint telling the user what to do next. The CLI prints ``error: ...`` / ``hint: ...``
and exits non-zero instead of showing a traceback.
"""
from __future__ import annotations


class CllmError(Exception):
    """Base class of every error cllm raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None,
                 tensor: str | None = None, offset: int | None = None) -> None:
        self.message = message
        self.hint = hint
        self.tensor = tensor
        self.offset = offset
        super().__init__(self.format())

    def format(self) -> str:
        where = []
        if self.tensor is not None:
            where.append(f"tensor '{self.tensor}'")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        prefix = f"{', '.join(where)}: " if where else ""
        return prefix + self.message


class LoadError(CllmError):
    """A model file or directory could not be read."""


class UnsupportedModelError(LoadError):
    """The model's architecture is not one cllm can compile."""


class ContainerError(CllmError):
    """A .cllm artifact is malformed, truncated or fails its checksums."""


class PassError(CllmError):
    """A pass was misconfigured or failed on a tensor."""


class PipelineError(PassError):
    """A pipeline string or recipe does not parse or names unknown passes/parameters."""


class TargetError(CllmError):
    """Unknown target or a target that cannot run the requested pipeline."""


class BackendError(CllmError):
    """A backend cannot lower or run the model (format it cannot hold, runtime missing)."""


class CodecError(CllmError):
    """Encoding or decoding of a payload failed."""


class EvalError(CllmError):
    """Evaluation could not run (missing data, mismatched tokenizers, ...)."""


class TrainError(CllmError):
    """A training recipe, its data or a checkpoint to resume is unusable."""


class OutputError(CllmError):
    """The artifact could not be written (disk full, permissions, existing folder)."""
