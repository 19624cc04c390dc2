"""Weight layouts for the Triton backend: compressed tensors as the tensors the GPU kernels read.

A linear weight W [N out, K in] is stored *transposed* (K-major, N contiguous), so the threads
of a warp, which own consecutive output columns n, read consecutive 32-bit words: every load
is coalesced. Codes are packed along K into int32 words, `per = 32 // bits` codes a word
(int3 takes 10 codes / 30 bits of a word: a code never straddles two words, one shift and a
mask unpack it):

  q     int32 [ceil(K / per), N]     packed codes (quant, scalar LUT)
  s     f16   [ceil(K / G), N]       per-group scales
  z     uint8 [ceil(K / G), N]       integer zero points (quant, zero=int)
  m     f16   [ceil(K / G), N]       llama.cpp-style mins (quant, zero=float: w = q*s + m)
  lut   f32   [nlut, 2^bits * d]     scalar (d = 1) or vector codebooks, stages stacked
  c     uint8 [stages, K / d, N]     VQ codes, one byte each (kbits <= 8)
  idx   int32 [ceil(K' / per), N]    N:M positions inside each group of M (K' = K * n / m kept)
  w     f16   [K, N]                 dense weights in the IR's dtype (also unquantized sparse values)

Nothing is dequantised ahead of time: the tensors hold exactly the .cllm's codes, scales and
codebooks, so the kernels' output equals the IR's decode up to float summation order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import BackendError
from ..reprs import Dense, Encoded, Quantized, Representation
from ..reprs_codebook import Codebook
from ..reprs_lowrank import LowRank
from ..reprs_sparse import Sparse

ZERO_MODES = {"sym": 0, "int": 1, "float": 2}


def is_matmul(name: str) -> bool:
    """Weights the kernels read compressed: every projection and the LM head."""
    return name.endswith("proj.weight") or name == "lm_head.weight"


@dataclass(frozen=True)
class Spec:
    """Static facts one kernel specialisation is compiled for (all Triton constexprs)."""

    kind: str              # dense | quant | lut | vq | sparse
    k: int                 # input features
    n: int                 # output features
    bits: int = 16         # code bits (quant, lut, vq, sparse values when quantized)
    group: int = 0         # scale group along K (0: none)
    zero: str = "sym"      # quant: sym | int | float
    per_row: bool = False  # lut/vq: one codebook per output row
    d: int = 1             # vq: vector length
    stages: int = 1        # vq: additive codebooks
    nm: tuple[int, int] = (0, 0)  # sparse: keep n of every m
    rank: int = 0          # fused low-rank epilogue (0: none)

    def tag(self) -> str:
        t = {"dense": "f16", "quant": f"q{self.bits}g{self.group}{self.zero[0]}",
             "lut": f"lut{self.bits}{'r' if self.per_row else ''}g{self.group}",
             "vq": f"vq{self.d}x{self.bits}s{self.stages}",
             "sparse": f"{self.nm[0]}of{self.nm[1]}" + (f"q{self.bits}g{self.group}{self.zero[0]}" if self.bits < 16 else "")}
        return t[self.kind] + (f"+r{self.rank}" if self.rank else "")


@dataclass
class GpuWeight:
    spec: Spec
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: str | torch.device) -> "GpuWeight":
        return GpuWeight(self.spec, {k: v.to(device) for k, v in self.tensors.items()})

    def nbytes(self) -> int:
        """Bytes a kernel reads for this weight: what bandwidth figures divide by."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def pack_words(codes: np.ndarray, bits: int) -> torch.Tensor:
    """codes [N, K] (ints < 2^bits) -> int32 [ceil(K / per), N], code k in bits (k % per)*bits."""
    per = 32 // bits
    n, k = codes.shape
    kw = -(-k // per)
    c = np.zeros((n, kw * per), dtype=np.uint32)
    c[:, :k] = codes
    c = c.reshape(n, kw, per) << (np.arange(per, dtype=np.uint32) * bits)
    words = np.bitwise_or.reduce(c, axis=2).T
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int32))


def _f16t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.astype(np.float16).T))


def _dense_t(rep: Dense) -> torch.Tensor:
    """W^T in the IR's own dtype (f32, f16 or bf16): a kernel must not round what the IR stores."""
    return rep.tensor().T.contiguous()


def _quant(rep: Quantized, n: int, k: int, **extra: object) -> GpuWeight:
    zero = "float" if rep.mins is not None else "sym" if rep.zeros is None else "int"
    spec = Spec(extra.pop("kind", "quant"), k, n, rep.bits, rep.group, zero, **extra)  # type: ignore[arg-type]
    t = {"q": pack_words(rep.codes, rep.bits), "s": _f16t(rep.scales)}
    if zero == "int":
        t["z"] = torch.from_numpy(np.ascontiguousarray(rep.zeros.astype(np.uint8).T))  # type: ignore[union-attr]
    elif zero == "float":
        t["m"] = _f16t(rep.mins)  # type: ignore[arg-type]
    return GpuWeight(spec, t)


def _codebook(rep: Codebook, n: int, k: int) -> GpuWeight:
    group = rep.group if rep.scales is not None else 0
    # lut [stages, nlut, K, d] -> [nlut, stages * K * d]: one row of codebooks per output row
    lut = torch.from_numpy(np.ascontiguousarray(rep.luts.astype(np.float32).transpose(1, 0, 2, 3)
                                                .reshape(rep.nlut, -1)))
    t = {"lut": lut}
    if rep.scales is not None:
        t["s"] = _f16t(rep.scales)
    if rep.d == 1 and rep.stages == 1:
        t["q"] = pack_words(rep.codes[0], rep.kbits)
        return GpuWeight(Spec("lut", k, n, rep.kbits, group, per_row=rep.nlut > 1), t)
    t["c"] = torch.from_numpy(np.ascontiguousarray(rep.codes.astype(np.uint8).transpose(0, 2, 1)))
    return GpuWeight(Spec("vq", k, n, rep.kbits, group, per_row=rep.nlut > 1, d=rep.d, stages=rep.stages), t)


def _sparse(rep: Sparse, n: int, k: int) -> GpuWeight:
    if not rep.m:
        raise BackendError("Triton kernels read N:M sparsity only, not per-row unstructured masks",
                           hint="prune with nm{n=2,m=4}")
    nn, m = rep.n, rep.m
    pos = np.nonzero(rep.mask.reshape(n, k // m, m))[2].reshape(n, -1)  # position of each kept value
    ib = max(1, (m - 1).bit_length())
    values = rep.values.inner() if isinstance(rep.values, Encoded) else rep.values
    kept = rep.k
    if isinstance(values, Quantized):
        g = _quant(values, n, kept, kind="sparse", nm=(nn, m))
    elif isinstance(values, Dense):
        g = GpuWeight(Spec("sparse", kept, n, 16, nm=(nn, m)), {"w": _dense_t(values)})
    else:
        raise BackendError(f"no Triton kernel for sparse values stored as '{values.describe()}'")
    g.tensors["idx"] = pack_words(pos.astype(np.uint8), ib)
    return GpuWeight(Spec(**{**g.spec.__dict__, "k": k}), g.tensors)


def lower_weight(rep: Representation, shape: tuple[int, int], name: str) -> GpuWeight:
    """The tensors one 2-D weight becomes; BackendError naming the tensor for what no kernel reads."""
    if isinstance(rep, Encoded):
        rep = rep.inner()  # entropy coding is for the disk; kernels read the decoded codes
    n, k = shape
    try:
        if isinstance(rep, LowRank):
            if rep.base is None:
                raise BackendError("a pure low-rank weight needs a base for the fused epilogue",
                                   hint="use lowrank with a quantized base (quant then lowrank)")
            g = lower_weight(rep.base, shape, name)
            g.tensors |= {"U": rep.u.to(torch.float16).T.contiguous(), "V": rep.v.to(torch.float16).contiguous()}
            return GpuWeight(Spec(**{**g.spec.__dict__, "rank": rep.rank}), g.tensors)
        if isinstance(rep, Dense):
            return GpuWeight(Spec("dense", k, n), {"w": _dense_t(rep)})
        if isinstance(rep, Quantized):
            return _quant(rep, n, k)
        if isinstance(rep, Codebook):
            return _codebook(rep, n, k)
        if isinstance(rep, Sparse):
            return _sparse(rep, n, k)
    except BackendError as e:
        raise BackendError(e.message, tensor=name, hint=e.hint) from None
    raise BackendError(f"the Triton backend has no kernel for '{rep.describe()}' weights", tensor=name,
                       hint="Triton kernels read dense, quant int2-8, scalar/vector codebooks, N:M sparse "
                            "(dense or quantized values) and any of these + a low-rank correction")
