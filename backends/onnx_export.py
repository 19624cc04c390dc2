"""Export to ONNX and write compressed weights as `com.microsoft.MatMulNBits` from the IR's codes.

`torch.onnx.export(dynamo=True)` (TorchScript's exporter fails on transformers 5) traces
`OnnxLlama` with dynamic batch, sequence and past lengths (opset 18). Every `MatMul(x, w_i)`
whose weight the IR stores as uniform integer codes is then replaced by MatMulNBits reading
those very codes — packed low-first along K, [N, k_blocks, blob] — with the IR's fp16 scales
(as float32) and its integer zero points, so nothing is dequantized and re-quantized and the
dequantized weight equals the IR's decode exactly. A weight ONNX cannot hold that way raises a
BackendError naming it (never a silent dense fallback).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import BackendError
from ..ir import Model
from ..reprs import Dense, Encoded, Quantized, Representation

NBITS = (2, 4, 8)  # bit-widths onnxruntime's CPU MatMulNBits kernel runs


def check_weight(rep: Representation, shape: tuple[int, int], name: str) -> str:
    """'nbits' or 'dense' for what this weight becomes, or BackendError naming it."""
    if isinstance(rep, Encoded):
        rep = rep.inner()
    if isinstance(rep, Dense):
        return "dense"
    if isinstance(rep, Quantized):
        n, k = shape
        g = rep.group
        if rep.mins is not None:
            raise BackendError("llama.cpp-style float mins have no exact MatMulNBits form", tensor=name,
                               hint="quantize with zero=int (or sym) for the ONNX target")
        if rep.bits not in NBITS or g < 16 or g & (g - 1) or k % g:
            raise BackendError(f"int{rep.bits} g{g} does not map onto MatMulNBits exactly", tensor=name,
                               hint=f"onnx-cpu runs bits {NBITS} with power-of-two groups 16-256 dividing K "
                                    f"({k}); e.g. quant{{bits=4,group=32}}")
        return "nbits"
    from ..reprs_codebook import Codebook
    if isinstance(rep, Codebook) and shape[1] % 32 == 0:
        return "requant"  # no exact ONNX form that stays compressed in memory: measured re-quantization
    raise BackendError(f"the ONNX backend has no exact form for '{rep.describe()}' weights", tensor=name,
                       hint="onnx-cpu runs dense and quant int2/4/8 weights (MatMulNBits); codebooks are "
                            "re-quantized to int4 g32 with the error reported")


def requantize(rep: Representation, name: str) -> tuple[Quantized, dict]:
    """A codebook weight as int4 block-32 codes (MatMulNBits), with the error this adds: ORT would
    otherwise constant-fold a Gather(codebook) -> MatMul subgraph into dense f32 at load."""
    from ..passes.quant import quantize_rtn
    w = rep.decode()
    q = quantize_rtn(w, 4, 32, sym=False, search=True)
    err = (q.decode() - w).pow(2).mean().item()
    return q, {"tensor": name, "from": rep.describe(), "to": "int4 g32 (MatMulNBits)",
               "rel_mse": err / max(w.pow(2).mean().item(), 1e-30)}


def pack_nbits(codes: np.ndarray, bits: int, group: int) -> np.ndarray:
    """codes [N, K] -> uint8 [N, K / group, group * bits / 8], codes low-first along K."""
    n, k = codes.shape
    per = 8 // bits
    c = codes.astype(np.uint8).reshape(n, k // per, per)
    packed = np.zeros((n, k // per), dtype=np.uint8)
    for j in range(per):
        packed |= (c[:, :, j] << (j * bits)).astype(np.uint8)
    return packed.reshape(n, k // group, group * bits // 8)


def nbits_arrays(q: Quantized) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, scales [N, k_blocks] f32, zero points packed uint8 [N, ceil(k_blocks * bits / 8)])."""
    n, k = q.codes.shape
    nb = k // q.group
    zeros = q.zeros if q.zeros is not None else np.full((n, nb), 1 << (q.bits - 1), dtype=np.uint8)
    per = 8 // q.bits
    zpad = np.zeros((n, -(-nb // per) * per), dtype=np.uint8)
    zpad[:, :nb] = zeros
    zp = np.zeros((n, zpad.shape[1] // per), dtype=np.uint8)
    for j in range(per):
        zp |= (zpad[:, j::per] << (j * q.bits)).astype(np.uint8)
    return pack_nbits(q.codes, q.bits, q.group), q.scales.astype(np.float32), zp


def gather_form(rep: Representation, shape: tuple[int, int]) -> str:
    """'gbq' when the embedding maps exactly onto GatherBlockQuantized (4/8-bit, int zeros), else 'dense'."""
    if isinstance(rep, Encoded):
        rep = rep.inner()
    ok = (isinstance(rep, Quantized) and rep.bits in (4, 8) and rep.mins is None and rep.group >= 16
          and not rep.group & (rep.group - 1) and shape[1] % rep.group == 0)
    return "gbq" if ok else "dense"


def export_onnx(model: Model, path: Path, notes: list[dict] | None = None) -> dict[str, str]:
    """Write model.onnx (+ external data) at `path`; returns each weight's ONNX form and appends
    a note (tensor, formats, relative MSE) to `notes` for every weight re-quantized."""
    import onnx

    from .onnx_model import OnnxLlama, matmul_weights
    reps = {n.name: n for n in model}
    # refuse before the module decodes every weight and the (slow) export runs
    forms = {n.name: check_weight(n.rep, n.shape, n.name) for _, n in matmul_weights(model)}
    net = OnnxLlama(model).eval()
    c = model.config
    ids = torch.zeros((1, 2), dtype=torch.long)
    past = torch.zeros((c.num_layers, 1, c.num_kv_heads, 1, c.head_dim))
    dims = {"B": torch.export.Dim("batch", max=256), "T": torch.export.Dim("seq", max=c.max_position_embeddings),
            "P": torch.export.Dim("past", max=c.max_position_embeddings)}
    import logging
    import warnings
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" x4, etc.
    # two distinct tensors: the same object twice makes the exporter alias keys and values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(net, (ids, past, past.clone()), dynamo=True, opset_version=18, verbose=False,
                                 input_names=["input_ids", "past_keys", "past_values"],
                                 output_names=["logits", "present_keys", "present_values"],
                                 dynamic_shapes={"input_ids": {0: dims["B"], 1: dims["T"]},
                                                 "past_keys": {1: dims["B"], 3: dims["P"]},
                                                 "past_values": {1: dims["B"], 3: dims["P"]}})
    proto = prog.model_proto
    emb = reps["model.embed_tokens.weight"]
    forms["model.embed_tokens.weight (lookup)"] = gather_form(emb.rep, emb.shape)
    _to_nbits(proto, net, reps, forms, notes if notes is not None else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return forms


def _to_nbits(proto, net, reps: dict, forms: dict[str, str], notes: list[dict]) -> None:
    from onnx import helper, numpy_helper
    inits = {t.name: t for t in proto.graph.initializer}
    used: set[str] = set()
    nodes = []
    table = "dense." + net._dense_keys["model.embed_tokens.weight"]
    tied = "lm_head.weight" not in reps
    head = f"w{net.index['lm_head.weight']}_nbits"
    for node in proto.graph.node:
        if node.op_type == "Gather" and node.input[0] == table and forms["model.embed_tokens.weight (lookup)"] == "gbq":
            shared = head if tied and forms.get("model.embed_tokens.weight") == "nbits" else None
            nodes.extend(_gather_nodes(node, reps["model.embed_tokens.weight"].rep, proto, shared))
            continue
        w = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else ""
        if not (w.startswith("w") and w[1:].isdigit() and w in inits):
            nodes.append(node)
            continue
        name = net.weight_names[int(w[1:])]
        rep = reps[name].rep.inner() if isinstance(reps[name].rep, Encoded) else reps[name].rep
        if forms[name] == "requant":
            rep, note = requantize(rep, name)
            notes.append(note)
        elif forms[name] != "nbits":
            nodes.append(node)
            continue
        b, s, zp = nbits_arrays(rep)
        n, k = rep.codes.shape
        base = f"{w}_nbits"
        if base not in used:
            used.add(base)
            proto.graph.initializer.extend([numpy_helper.from_array(b, base + "_B"),
                                            numpy_helper.from_array(s, base + "_scales"),
                                            numpy_helper.from_array(zp, base + "_zp")])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], base + "_B", base + "_scales", base + "_zp"],
                                      list(node.output), name=node.name + "_nbits", domain="com.microsoft",
                                      K=k, N=n, bits=rep.bits, block_size=rep.group))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    live = {i for nd in proto.graph.node for i in nd.input}
    keep = [t for t in proto.graph.initializer if t.name in live]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _gather_nodes(node, rep: Representation, proto, shared: str | None) -> list:
    """GatherBlockQuantized over the embedding's codes (quantize axis 1, blocks of `group`). With a
    tied head (`shared`: its MatMulNBits initializers) the codes are stored once: the gather reads
    the head's [V, k_blocks, blob] bytes through a Reshape to [V, H * bits / 8]."""
    from onnx import helper, numpy_helper
    q = rep.inner() if isinstance(rep, Encoded) else rep
    v, h = q.codes.shape
    out = []
    if shared:
        data, scales, zp = "embed_q", shared + "_scales", shared + "_zp"
        proto.graph.initializer.append(numpy_helper.from_array(np.array([v, h * q.bits // 8], np.int64), "embed_shape"))
        out.append(helper.make_node("Reshape", [shared + "_B", "embed_shape"], [data], name=node.name + "_reshape"))
    else:
        b, s, z = nbits_arrays(q)
        data, scales, zp = "embed_q", "embed_scales", "embed_zp"
        proto.graph.initializer.extend([numpy_helper.from_array(b.reshape(v, -1), data),
                                        numpy_helper.from_array(s, scales), numpy_helper.from_array(z, zp)])
    out.append(helper.make_node("GatherBlockQuantized", [data, node.input[1], scales, zp], list(node.output),
                                name=node.name + "_gbq", domain="com.microsoft", bits=q.bits, block_size=q.group,
                                gather_axis=0, quantize_axis=1))
    return out
