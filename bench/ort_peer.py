"""onnxruntime's MatMulNBits weight-only quantizer as a peer in the rate-distortion sweep.

Every linear (and the tied lm_head) becomes one fp16 MatMul in an ONNX graph; onnxruntime's
`MatMulNBitsQuantizer` quantizes it (RTN = its default C++ kernels, and HQQ; its k_quant crashes, see CONFIGS); the quantized
weights are read back, dequantized with the MatMulNBits layout (checked against onnxruntime
itself running the node) and put into the IR for the same torch evaluation as every other
point. Bytes counted: the quantized .onnx file + the f32 norms + the zstd tokenizer, i.e. what
a .cllm holds. GPTQ in onnxruntime needs Intel neural-compressor and whole-model calibration
inputs, so it is not run here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CONFIGS = {"ort-rtn-int4-b32": ("rtn", 4, 32), "ort-rtn-int4-b128": ("rtn", 4, 128),
           "ort-hqq-int4-b64": ("hqq", 4, 64), "ort-rtn-int8-b128": ("rtn", 8, 128),
           "ort-rtn-int2-b32": ("rtn", 2, 32)}
# k_quant (algo "kquant" below) is not in the sweep: onnxruntime 1.32's KQuantWeightOnlyQuantConfig
# crashes in its zero-point packing ("cannot reshape array of size 221184 into shape (49152,...)") on
# SmolLM2's 49152x576 lm_head, on every asymmetric layer, and on ragged blocks (576 columns at 128).


def _weights(model) -> dict[str, np.ndarray]:
    out = {}
    for node in model:
        if node.role.startswith(("attn", "mlp")) or node.role == "lm_head" or (
                node.role == "embed" and model.config.tie_word_embeddings):
            out[node.name] = node.rep.decode().numpy()
    return out


def build_graph(weights: dict[str, np.ndarray]):
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, ins, outs = [], [], [], []
    for i, (name, w) in enumerate(weights.items()):
        n, k = w.shape
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T.astype(np.float16)), f"B{i}"))
        ins.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT16, [1, k]))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT16, [1, n]))
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"B{i}"], [f"y{i}"], name=f"mm{i}"))
    graph = helper.make_graph(nodes, "cllm_linears", ins, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def quantize(proto, algo: str, bits: int, block: int):
    from onnxruntime.quantization import matmul_nbits_quantizer as q
    sym = algo == "kquant"
    cfg = {"hqq": lambda: q.HQQWeightOnlyQuantConfig(block_size=block, bits=bits),
           "kquant": lambda: q.KQuantWeightOnlyQuantConfig(),
           "rtn": lambda: q.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, bits=bits)}[algo]()
    quant = q.MatMulNBitsQuantizer(proto, bits=bits, block_size=block, is_symmetric=sym, algo_config=cfg)
    quant.process()
    return quant.model.model


def _unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    vals = (data[..., None] >> (np.arange(per, dtype=np.uint8) * bits)) & ((1 << bits) - 1)
    return vals.reshape(*data.shape[:-1], -1)[..., :count]


def dequantize(proto) -> dict[str, np.ndarray]:
    """{output name: W [N, K] float32} for every MatMulNBits node."""
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        a = {x.name: x.i for x in node.attribute}
        k, n, bits, bs = a["K"], a["N"], a["bits"], a["block_size"]
        nb = -(-k // bs)
        q = _unpack(inits[node.input[1]].reshape(n, nb, -1), bits, bs).astype(np.float32)  # [N, nb, bs]
        scale = inits[node.input[2]].reshape(n, nb).astype(np.float32)
        zp_in = inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if zp_in is None:
            zp = np.full((n, nb), float(1 << (bits - 1)), np.float32)
        elif zp_in.dtype == np.uint8:
            zp = _unpack(zp_in.reshape(n, -1), bits, nb).astype(np.float32)
        else:  # HQQ stores float zero points
            zp = zp_in.reshape(n, nb).astype(np.float32)
        w = ((q - zp[..., None]) * scale[..., None]).reshape(n, nb * bs)[:, :k]
        out[node.output[0]] = w
    return out


def check_against_onnxruntime(proto, deq: dict[str, np.ndarray], names: list[str]) -> float:
    """Largest relative error between onnxruntime running the node and x @ W_deq^T."""
    import onnxruntime as ort
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal(i.shape).astype(np.float16) for i in sess.get_inputs()}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    worst = 0.0
    for i in range(len(names)):
        ref = feeds[f"x{i}"].astype(np.float32) @ deq[f"y{i}"].T
        worst = max(worst, float(np.abs(got[f"y{i}"] - ref).max() / (np.abs(ref).max() + 1e-6)))
    return worst


def prepare_ort(model_path: Path, work: Path, names: list[str]) -> dict[str, dict]:
    import zstandard
    from cllm_compiler.container import write_container
    from cllm_compiler.loading import load_model
    from cllm_compiler.reprs import Dense
    facts = {}
    for cfg in names:
        algo, bits, block = CONFIGS[cfg]
        onnx_path, cllm_path = work / f"{cfg}.onnx", work / f"{cfg}.cllm"
        model = load_model(model_path)
        weights = _weights(model)
        if not cllm_path.exists():
            import onnx
            qproto = quantize(build_graph(weights), algo, bits, block)
            onnx.save(qproto, str(onnx_path))
            deq = dequantize(qproto)
            err = check_against_onnxruntime(qproto, deq, list(weights))
            if err > 1e-2:
                raise SystemExit(f"{cfg}: dequantization disagrees with onnxruntime (rel err {err:.3g})")
            for i, name in enumerate(weights):
                w = deq[f"y{i}"]
                model.tensors[name].rep = Dense(w.shape, "f32", data=__import__("torch").from_numpy(np.ascontiguousarray(w)))
            write_container(model, cllm_path)
        other = sum(n.numel * 4 for n in model if n.name not in weights)
        tok = len(zstandard.ZstdCompressor(level=19).compress(model.tokenizer.tokenizer_json.encode()))
        facts[cfg] = {"path": str(cllm_path), "bytes": onnx_path.stat().st_size + other + tok,
                      "params": model.num_params, "kind": "onnxruntime"}
    return facts
