"""cllm-run: generate text with a compiled artifact on this machine.

An artifact with a lowered model.gguf runs in llama.cpp (llama-cpp-python); one with a TVM
package built for this machine (tvm/, --target host: x86-avx2 or x86-avx512) runs in TVM's Relax VM with the
compressed weights; `--device cuda` runs any artifact on an NVIDIA GPU with cllm's Triton
kernels reading the compressed weights in place (quant, codebook, VQ, 2:4, + low-rank; CUDA
graphs for decode); any other runs in the PyTorch reference runner (decoded float32 weights).
Greedy decoding.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .ui import THREADS_HELP, run_cli, setup_threads, step

EPILOG = """\
examples:
  cllm-run out/smollm2-gguf-cpu --prompt "The capital of France is" -n 16
  cllm-run out/smollm2-x86-avx2 --prompt "Once upon a time" --threads 2   # TVM package (tvm/)
  cllm-run out/smollm2-x86-avx2 --prompt "Once upon a time" --runner torch
  cllm-run art/ --chat "What is the capital of France?"     # applies the model's chat template
  cllm-run out/smollm2-h100 --prompt "Once upon a time" --device cuda   # Triton kernels on the GPU
"""


CHAT_LIMIT = 1 << 20   # characters a rendered chat prompt may have
CHAT_SECONDS = 2.0     # a template is a tiny program: loops of 10^5 x 10^5 must not run for hours


def render_chat(template: str, message: str) -> str:
    """The model's chat template around one user message, rendered in jinja2's immutable sandbox
    (as transformers does): a template is data from the model file, never code to run. Bounded
    too: string and list repetition, the output's length and the render's time."""
    import signal

    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    from ..errors import EvalError

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):  # type: ignore[no-untyped-def]
            sized = next((x for x in (left, right) if isinstance(x, (str, list, tuple))), None)
            count = right if sized is left else left
            if operator == "*" and sized is not None and isinstance(count, int) and len(sized) * count > CHAT_LIMIT:
                raise SecurityError("the template repeats a value past the prompt's size limit")
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError("the template raises to a power above 64")
            return super().call_binop(context, operator, left, right)

    def timeout(*_: object) -> None:
        raise TimeoutError(f"rendering took over {CHAT_SECONDS} s")

    env = Bounded(trim_blocks=True, lstrip_blocks=True)
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, CHAT_SECONDS)
    try:
        out, size = [], 0
        for chunk in env.from_string(template).generate(messages=[{"role": "user", "content": message}],
                                                        add_generation_prompt=True):
            size += len(chunk)
            if size > CHAT_LIMIT:
                raise SecurityError(f"the rendered prompt passes {CHAT_LIMIT} characters")
            out.append(chunk)
        return "".join(out)
    except (TemplateError, RecursionError, MemoryError, OverflowError, TimeoutError, TypeError, ValueError) as e:
        raise EvalError(f"the model's chat template cannot be rendered safely: {type(e).__name__}: {str(e)[:200]}",
                        hint="use --prompt with your own text; the template may try to reach Python internals") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="cllm-run", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path, help="artifact folder written by cllm-compile")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="text to continue")
    g.add_argument("--chat", help="a user message, wrapped in the model's chat template")
    ap.add_argument("-n", "--max-tokens", type=int, default=32, help="tokens to generate (default 32)")
    ap.add_argument("--runner", choices=("auto", "llama.cpp", "tvm", "triton", "torch"), default="auto",
                    help="auto = triton with --device cuda, llama.cpp for model.gguf, tvm for a TVM package "
                         "built for this host, else torch")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: run on the NVIDIA GPU with the Triton kernels (needs pip install -e .[cuda])")
    ap.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    from ..errors import CllmError
    if args.device == "cuda" or args.runner == "triton":
        step(f"runner: Triton kernels on the GPU ({args.artifact / 'model.cllm'})")
        sys.stdout.write(_generate(args.artifact, args.prompt, args.chat, args.max_tokens, gpu=True) + "\n")
        return 0
    gguf = args.artifact / "model.gguf"
    from ..backends.tvm_backend import runs_here
    local_tvm = args.runner in ("auto", "tvm") and runs_here(args.artifact)
    runner = args.runner if args.runner != "auto" else ("llama.cpp" if gguf.is_file() else "tvm" if local_tvm else "torch")
    if runner == "llama.cpp" and not gguf.is_file():
        raise CllmError(f"{args.artifact} has no model.gguf", hint="compile with --target gguf-cpu, or use --runner torch")
    if runner == "tvm" and not local_tvm:
        raise CllmError(f"{args.artifact} has no TVM package built for this machine",
                        hint="compile with --target host (this CPU's x86 target); Jetson packages run on the device (cllm-validate)")
    if runner == "llama.cpp":
        step(f"runner: llama.cpp ({gguf})")
        from ..backends.gguf_run import LlamaCppModel
        lm = LlamaCppModel(gguf, n_ctx=2048, logits_all=False, kv_type="f16")
        text = lm.chat(args.chat, args.max_tokens) if args.chat else lm.generate(args.prompt, args.max_tokens)
    elif runner == "tvm":
        step(f"runner: TVM ({args.artifact / 'tvm'})")
        text = _generate(args.artifact, args.prompt, args.chat, args.max_tokens, tvm=True)
    else:
        step(f"runner: torch reference ({args.artifact})")
        text = _generate(args.artifact, args.prompt, args.chat, args.max_tokens)
    sys.stdout.write(text + "\n")
    return 0


def _generate(artifact: Path, prompt: str | None, chat: str | None, n: int, tvm: bool = False,
              gpu: bool = False) -> str:
    import torch

    from ..backends.torch_ref import build_torch_model
    from ..errors import EvalError
    from ..loading import load_model
    if gpu:
        _check_cuda()
    model = load_model(artifact)
    if model.tokenizer is None:
        raise EvalError("the artifact has no tokenizer", hint="compile from a model folder with tokenizer.json")
    tok = model.tokenizer.load()
    if chat is not None:
        if not model.tokenizer.chat_template:
            raise EvalError("the model has no chat template", hint="use --prompt")
        prompt = render_chat(model.tokenizer.chat_template, chat)
    ids = torch.tensor([tok.encode(prompt or "", add_special_tokens=model.tokenizer.add_bos).ids])
    if tvm:
        from ..backends.tvm_run import TvmModel
        eos = model.config.eos_token_id
        out = TvmModel(artifact / "tvm").generate_ids(ids[0].tolist(), n, eos=eos)
        return tok.decode(out[:-1] if out and out[-1] == eos else out)
    eos = model.config.eos_token_id
    if gpu:
        from ..backends.triton_model import TritonLlama
        from ..backends.triton_run import generate_ids
        max_len = min(ids.shape[1] + n + 1, model.config.max_position_embeddings)
        net_gpu = TritonLlama(model, "cuda", batch=1, max_len=max_len)
        out = generate_ids(net_gpu, ids[0].tolist(), n, eos=eos)
        return tok.decode(out[:-1] if out and out[-1] == eos else out)
    net = build_torch_model(model)
    with torch.inference_mode():
        out = net.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:].tolist())


def _check_cuda() -> None:
    import os

    import torch

    from ..errors import BackendError
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise BackendError("TRITON_INTERPRET is set: the kernels would run interpreted, not on the GPU",
                           hint="unset TRITON_INTERPRET")
    if not torch.cuda.is_available():
        raise BackendError("no CUDA GPU is visible to PyTorch on this machine",
                           hint="run on a machine with an NVIDIA GPU and a CUDA build of torch "
                                "(pip install -e .[cuda]); the CPU runners need no flag")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise BackendError("triton is not installed", hint="pip install -e .[cuda]") from None


if __name__ == "__main__":
    raise SystemExit(main())
