"""The model IR: architecture config + tokenizer + ordered tensors with representations.

Tensor names follow Hugging Face's Llama naming (``model.layers.0.self_attn.q_proj.weight``)
whatever the source format, so passes and backends see one vocabulary.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from .errors import UnsupportedModelError
from .model_checks import check_config
from .reprs import Representation

SUPPORTED_ARCHS = ("llama", "mistral", "qwen2")

# Role of a tensor, derived from its name; passes match on roles.
_ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"embed_tokens\.weight$", "embed"),
    (r"^lm_head\.weight$", "lm_head"),
    (r"norm\.weight$", "norm"),
    (r"\.bias$", "bias"),
    (r"self_attn\.q_proj\.weight$", "attn_q"),
    (r"self_attn\.k_proj\.weight$", "attn_k"),
    (r"self_attn\.v_proj\.weight$", "attn_v"),
    (r"self_attn\.o_proj\.weight$", "attn_o"),
    (r"mlp\.gate_proj\.weight$", "mlp_gate"),
    (r"mlp\.up_proj\.weight$", "mlp_up"),
    (r"mlp\.down_proj\.weight$", "mlp_down"),
)
LINEAR_ROLES = frozenset({"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"})
ROLE_GROUPS: dict[str, frozenset[str]] = {
    "linear": LINEAR_ROLES,
    "attn": frozenset(r for r in LINEAR_ROLES if r.startswith("attn")),
    "mlp": frozenset(r for r in LINEAR_ROLES if r.startswith("mlp")),
    "all": LINEAR_ROLES | {"embed", "lm_head", "norm", "bias"},
}
ALL_ROLES = ROLE_GROUPS["all"]


def role_of(name: str) -> str:
    for pattern, role in _ROLE_PATTERNS:
        if re.search(pattern, name):
            return role
    return "other"


def layer_of(name: str) -> int | None:
    m = re.search(r"layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class ModelConfig:
    """Architecture facts needed to run a Llama-family decoder."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise UnsupportedModelError(
                f"architecture '{self.arch}' is not supported",
                hint=f"cllm compiles the Llama family: {', '.join(SUPPORTED_ARCHS)}")
        check_config(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**d)


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer as the `tokenizers` library's JSON plus the few facts around it."""

    tokenizer_json: str
    add_bos: bool = False
    chat_template: str | None = None

    def load(self):  # -> tokenizers.Tokenizer
        from tokenizers import Tokenizer
        return Tokenizer.from_str(self.tokenizer_json)


@dataclass
class TensorNode:
    name: str
    shape: tuple[int, ...]
    rep: Representation
    role: str = ""
    layer: int | None = None

    def __post_init__(self) -> None:
        self.role = self.role or role_of(self.name)
        self.layer = self.layer if self.layer is not None else layer_of(self.name)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Model:
    config: ModelConfig
    tokenizer: TokenizerSpec | None
    tensors: dict[str, TensorNode] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # path, sha256, format

    def add(self, node: TensorNode) -> None:
        self.tensors[node.name] = node

    def __iter__(self) -> Iterator[TensorNode]:
        return iter(self.tensors.values())

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self)

    def storage_bits(self) -> int:
        return sum(t.rep.storage_bits() for t in self)

    def state_dict(self):
        """Decode every tensor to a dense float tensor (for the torch reference runner)."""
        return {t.name: t.rep.decode() for t in self}
