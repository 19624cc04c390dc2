"""cllm-compile: compress a model for a target and write a validated artifact folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..passes_base import PASSES
from ..passmanager import Instrument
from ..targets import DEFAULT_TARGET, TARGETS, get_target
from .ui import console, out, progress, run_cli, setup_threads, step
from .summary import print_summary

EPILOG = """\
examples:
  cllm-compile                                   # SmolLM2-135M for x86-avx512, default pipeline
  cllm-compile model.gguf --target jetson-orin-nano-8gb -o orin/   # aarch64 + sm_87 package in orin/tvm/
  cllm-compile hf_dir/ --pipeline "quant{bits=3,group=64},entropy{codec=zstd}" --eval-windows 8
  cllm-compile hf_dir/ --recipe recipe.yaml
  cllm-compile --budget 3.5                      # per-tensor bits chosen to fit 3.5 bits/weight on disk
  cllm-compile -p "calibrate,gptq{bits=3,group=128},entropy"               # GPTQ
  cllm-compile -p "calibrate,codebook{bits=3},gptq,entropy{codec=rans}"    # SqueezeLLM-style LUTs + GPTQ
  cllm-compile -p "calibrate,nm{n=2,m=4,method=sparsegpt},quant{bits=4,group=64},gptq,entropy"
  cllm-compile -p "calibrate,quant{bits=3,group=128},lowrank{rank=16},entropy"   # int3 + low-rank fix

pipeline syntax: pass{key=value,...},pass,...   (see --list-passes)
  quant{bits=2..8,group=32|64|128|channel,sym=false,match=linear,skip=REGEX}
  cast{dtype=f16}      entropy{codec=auto|rans|zstd|raw}
  calibrate{tokens=32768,seqlen=512,data=moby-dick|FILE|DIR}   gptq{bits,group,act_order,damp}
  codebook{bits,d=1|2|4|8,stages,scope=row|tensor,group}   nm{n,m,sparsity,method=magnitude|wanda|sparsegpt}
  lowrank{mode=svd|correct,rank|energy|bpw,whiten}   allocate{budget,choices=bits=2|3|4;group=64|128}
  match= takes roles joined by '|': linear attn mlp embed lm_head norm bias attn_q ... mlp_down
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="cllm-compile", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="HF folder, .gguf file (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--target", "-t", default=DEFAULT_TARGET, help=f"target device (default {DEFAULT_TARGET}; see --list-targets)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--pipeline", "-p", help="pipeline string (default: the target's default pipeline)")
    g.add_argument("--recipe", type=Path, help="YAML recipe with a 'pipeline:' list")
    ap.add_argument("--budget", type=float, metavar="BPW",
                    help="bits/weight of the whole file: per-tensor bits chosen by the allocator "
                         "(uses the pipeline's allocate pass, or a calibrate+allocate+GPTQ pipeline)")
    ap.add_argument("-o", "--out", type=Path, help="artifact folder (default: out/<model>-<target>)")
    ap.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    ap.add_argument("--eval-windows", type=int, default=4, metavar="N",
                    help="WikiText-2 windows for the validation report (0 = skip; all = 148 for SmolLM2 @2048)")
    ap.add_argument("--seqlen", type=int, default=2048, help="evaluation window length in tokens")
    ap.add_argument("--no-lower", action="store_true",
                    help="stop at the portable model.cllm: no backend build (TVM/GGUF); validated in PyTorch")
    ap.add_argument("--dump-ir", type=Path, metavar="DIR", help="write an IR summary after every pass")
    ap.add_argument("--list-targets", action="store_true", help="list targets and exit")
    ap.add_argument("--list-passes", action="store_true", help="list passes with their parameters and exit")
    return ap.parse_args(argv)


BUDGET_PIPELINE = ("calibrate,allocate{{budget={budget},choices=bits=2|3|4|5|6|8}},"
                   "gptq{{match=linear|embed|lm_head}},quant{{match=embed|lm_head}},entropy")

# GGUF targets: per-tensor llama.cpp types (like llama-quantize --tensor-type), budgeted in GGUF
# bytes; on rows that are not whole 256-blocks a K-type stands for llama.cpp's own substitute.
# Quality-first: measured (bench/README.md, issue 5) KLD 0.08-0.40x llama.cpp's at 6 of 7 sizes, but
# its Q5_0/Q5_1 picks decode at 0.77-0.92x llama.cpp's mixes at 3 sizes. Speed-first alternative:
# GGUF_FAST_TYPES with fallback=error (decode >= 0.94x everywhere, KLD worse at mid sizes).
GGUF_TYPES = "Q2_K|Q3_K|IQ4_XS|IQ4_NL|Q4_K|Q5_0|Q5_K|Q6_K|Q8_0"
GGUF_FAST_TYPES = "Q2_K|Q3_K|Q4_0|IQ4_NL|Q4_K|Q5_K|Q6_K|Q8_0"
GGUF_BUDGET_PIPELINE = ("calibrate,allocate{{budget={budget},rate=gguf,choices=type=" + GGUF_TYPES + "}},"
                        "ggml{{match=linear|embed|lm_head}},entropy")


def apply_budget(passes: list, budget: float) -> None:
    from ..errors import PipelineError
    alloc = [p for p in passes if p.name == "allocate"]
    if not alloc:
        raise PipelineError("--budget needs an allocate pass in the pipeline",
                            hint="add calibrate,allocate before the quantizing passes, or drop --pipeline")
    for p in alloc:
        p.args["budget"] = alloc[0]._coerce(next(q for q in p.all_params() if q.name == "budget"), budget)


def list_passes() -> None:
    from .. import builtin_passes  # noqa: F401
    for name, cls in sorted(PASSES.items()):
        out.print(f"[bold]{name}[/]: {cls.help}")
        for p in cls.all_params():
            out.print(f"    {p.name + '=' + str(p.default):<26} {p.help}", highlight=False, markup=False)


def list_targets() -> None:
    for t in TARGETS.values():
        out.print(f"[bold]{t.name:<22}[/] {t.description}  [dim]backend={t.backend}, {t.memory_gb:g} GB, "
                  f"{t.bandwidth_gbs:g} GB/s[/]\n{'':24}default: {t.default_pipeline}", highlight=False)


class _ProgressInstrument(Instrument):
    def __init__(self, prog) -> None:
        self.prog = prog

    def before_pass(self, p, model) -> None:
        step(f"pass {p.spec()}")
        task = self.prog.add_task(f"pass {p.name}", total=p.count(model))
        p.on_tensor = lambda name: self.prog.advance(task)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.list_passes:
        list_passes()
        return 0
    if args.list_targets:
        list_targets()
        return 0
    from ..compiler import compile_model
    from ..default_model import default_model_path
    from ..errors import CllmError
    from ..pipeline import load_recipe, parse_pipeline
    target = get_target(args.target)
    if args.budget is not None and not (args.pipeline or args.recipe):
        recipe = GGUF_BUDGET_PIPELINE if target.backend == "gguf" else BUDGET_PIPELINE
        args.pipeline = recipe.format(budget=args.budget)
    passes = (load_recipe(args.recipe) if args.recipe else parse_pipeline(args.pipeline or target.default_pipeline))
    if args.budget is not None:
        apply_budget(passes, args.budget)
    model_path = Path(args.model) if args.model else default_model_path()
    if not model_path.exists():  # fail before any work or output
        from ..errors import LoadError
        raise LoadError(f"{model_path} does not exist",
                        hint="give a Hugging Face model folder, a .gguf file, or no MODEL for the default")
    if args.eval_windows < 0:
        raise CllmError("--eval-windows must be >= 0")
    outdir = args.out or Path("out") / f"{model_path.stem.split('.')[0]}-{target.name}"
    setup_threads()
    with progress() as prog:
        etask = prog.add_task("evaluate", total=args.eval_windows or 1, visible=False)
        wtask = prog.add_task("write model.cllm", total=None, visible=False)

        def eval_progress(done: int, total: int) -> None:
            prog.update(etask, completed=done, total=total, visible=True)
        result = compile_model(model_path, target, passes, outdir, force=args.force,
                               eval_windows=args.eval_windows, seqlen=args.seqlen, dump_ir=args.dump_ir,
                               instruments=[_ProgressInstrument(prog)], on_step=step,
                               eval_progress=eval_progress, lower=not args.no_lower,
                               write_progress=lambda name: prog.update(wtask, advance=1, visible=True))
    print_summary(result.report, result.out)
    console.print(f"[green]artifact written:[/] {result.out}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
