"""SmolLM2-135M end to end on a CUDA GPU: decode tokens/s and J/token (NVML) at batch 1 and 16 for
int4, codebook and 2:4+int4 artifacts against fp16 weights through torch's cuBLAS in the same
runtime (same attention, norms and CUDA graph: only the matmuls differ), and each artifact's
logits against the torch fp32 reference of the same IR (KLD, top-1) on 512 WikiText-2 tokens.
Called by bench/triton_bench.py; `python bench/triton_e2e.py` runs it alone."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cllm_compiler.backends.torch_ref import build_torch_model  # noqa: E402
from cllm_compiler.backends.triton_model import TritonLlama  # noqa: E402
from cllm_compiler.backends.triton_run import decode_speed  # noqa: E402
from cllm_compiler.compiler import compile_model  # noqa: E402
from cllm_compiler.container import read_container  # noqa: E402
from cllm_compiler.default_model import default_model_path  # noqa: E402
from cllm_compiler.evaluate import tokenize, wikitext_text  # noqa: E402
from cllm_compiler.pipeline import parse_pipeline  # noqa: E402
from cllm_compiler.targets import get_target  # noqa: E402
from cllm_compiler.validate import compare_logits  # noqa: E402

PIPELINES = {
    "fp16 (torch cuBLAS)": "cast{dtype=f16}",
    "int4 g128": "quant{bits=4,group=128},entropy{codec=rans}",
    "codebook lut4/row": "codebook{bits=4,scope=row},entropy{codec=rans}",
    "2:4 + int4": "nm{n=2,m=4,method=magnitude},quant{bits=4,group=128},entropy{codec=rans}",
}


def end_to_end(model_path: Path | None = None, device: str = "cuda", new_tokens: int = 128,
               batches: tuple[int, ...] = (1, 16), prompt: int = 256, scored: int = 512,
               repeats: int = 5) -> list[dict]:
    """One row per format and batch. `device="cpu"` (with TRITON_INTERPRET=1) only checks the flow."""
    rows = []
    work = Path(tempfile.mkdtemp())
    for name, pipe in PIPELINES.items():
        t0 = time.perf_counter()
        folder = work / name.split()[0]
        compile_model(model_path or default_model_path(), get_target("h100"), parse_pipeline(pipe), folder,
                      lower=device == "cuda")
        model = read_container(folder / "model.cllm")
        ids = tokenize(model.tokenizer, wikitext_text()[:20000])[:scored]
        ref = build_torch_model(model).to(device)
        with torch.inference_mode():
            ref_logits = ref(ids[None].to(device)).logits[0].float().cpu()
        del ref
        for b in batches:
            net = TritonLlama(model, device, batch=b, max_len=max(scored, prompt + new_tokens + 1),
                              torch_dense=name.startswith("fp16"))
            sp = decode_speed(net, ids[:prompt].tolist(), new_tokens, repeats=repeats)
            row = {"format": name, "pipeline": pipe, **sp}
            if b == 1:
                logits = net.prefill(ids[None], last_only=False)[0].float().cpu()
                row |= {"vs_torch_fp32_same_ir": compare_logits(ref_logits, logits, ids)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del net
            if device == "cuda":
                torch.cuda.empty_cache()
        rows[-1]["compile_s"] = round(time.perf_counter() - t0, 1)
    return rows


if __name__ == "__main__":
    print(json.dumps(end_to_end(), indent=1))
