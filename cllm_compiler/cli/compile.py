"""cllm-compile: compress a model for a target and write a validated artifact folder."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..passes_base import PASSES
from ..passmanager import Instrument
from ..targets import DEFAULT_TARGET, TARGETS
from .summary import print_summary
from .ui import THREADS_HELP, console, out, progress, run_cli, setup_threads, step

EPILOG = """\
examples:
  cllm-compile                                   # SmolLM2-135M for this CPU (--target host), the target's plan
  cllm-compile --validate --threads 2            # + cross-backend check, latency vs llama.cpp, energy, report.html
  cllm-compile -t x86-avx512 -o srv/             # for an AVX-512 server (built here; run only where it can)
  cllm-compile model.gguf --targets x86-avx2,gguf-cpu,jetson-orin-nano-8gb -o multi/   # one run, 3 plans
  cllm-compile -p default -t gguf-cpu            # the target's fast round-to-nearest pipeline (no calibration)
  cllm-compile model.gguf --target jetson-orin-nano-8gb -o orin/   # aarch64 + sm_87 package in orin/tvm/
  cllm-compile hf_dir/ --pipeline "quant{bits=3,group=64},entropy{codec=zstd}" --eval-windows 8
  cllm-compile hf_dir/ --recipe recipe.yaml
  cllm-compile --budget 3.5                      # per-tensor bits chosen to fit 3.5 bits/weight on disk
  cllm-compile --budget 3 --reconstruct --distill   # the same bytes, compression-aware trained (~30 min)
  cllm-compile --budget 3 --reconstruct --checkpoint ck/ -t host   # + the trained model as HF folder +
                                                 # compression.json (cllm-train's format), for other targets
  cllm-compile -p "calibrate,gptq{bits=3,group=128},entropy"               # GPTQ
  cllm-compile -p "calibrate,codebook{bits=3},gptq,entropy{codec=rans}"    # SqueezeLLM-style LUTs + GPTQ
  cllm-compile -p "calibrate,nm{n=2,m=4,method=sparsegpt},quant{bits=4,group=64},gptq,entropy"
  cllm-compile -p "calibrate,quant{bits=3,group=128},lowrank{rank=16},entropy"   # int3 + low-rank fix

plans: without --pipeline, each target's plan picks the pipeline and budget from its facts (memory,
  bandwidth, formats; targets/targets.toml) and the model's size; the report says why.
pipeline syntax: pass{key=value,...},pass,...   (see --list-passes)
  quant{bits=2..8,group=32|64|128|channel,sym=false,match=linear,skip=REGEX}
  cast{dtype=f16}      entropy{codec=auto|rans|zstd|raw}
  calibrate{tokens=16384,seqlen=512,data=mix|moby-dick|FILE|DIR,sink=0.03125}   gptq{bits,group,act_order,damp}
  codebook{bits,d=1|2|4|8,stages,scope=row|tensor,group}   nm{n,m,sparsity,method=magnitude|wanda|sparsegpt}
  lowrank{mode=svd|correct,rank|energy|bpw,whiten}   allocate{budget,choices=bits=2|3|4;group=64|128}
  reconstruct{tokens=8192,steps=60,codes=keep|learn,resume=DIR}   distill{tokens=32768,lr_scale,topk=64}
  match= takes roles joined by '|': linear attn mlp embed lm_head norm bias attn_q ... mlp_down
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="cllm-compile", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="HF folder, .gguf file (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--target", "-t", default=DEFAULT_TARGET,
                    help=f"target device (default {DEFAULT_TARGET}: the best x86 target this CPU runs, x86-avx512 "
                         "or x86-avx2, read from its CPU flags; see --list-targets)")
    ap.add_argument("--targets", metavar="A,B,C",
                    help="compile for several targets in one run (each with its own plan, one shared calibration); "
                         "-o is then the parent folder, with one folder per target and a manifest.json")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--pipeline", "-p", help="pipeline string (default: the target's plan; 'default': the target's "
                                            "fast round-to-nearest pipeline)")
    g.add_argument("--recipe", type=Path, help="YAML recipe with a 'pipeline:' list")
    ap.add_argument("--budget", type=float, metavar="BPW",
                    help="bits/weight of the whole file: per-tensor bits chosen by the allocator "
                         "(uses the pipeline's allocate pass, or a calibrate+allocate+GPTQ pipeline)")
    ap.add_argument("--reconstruct", action="store_true",
                    help="train each decoder layer's quantized grid to reproduce the float layer (the reconstruct "
                         "pass, block-wise, before entropy coding; minutes per layer on a CPU)")
    ap.add_argument("--distill", action="store_true",
                    help="then distill the whole compressed model from the float one: scales and norms learn its "
                         "logits (the distill pass, end to end, after reconstruct; ~15 min for 135M params on one core)")
    ap.add_argument("-o", "--out", type=Path, help="artifact folder (default: out/<model>-<target>)")
    ap.add_argument("--force", action="store_true", help="replace an existing artifact folder")
    ap.add_argument("--checkpoint", type=Path, metavar="DIR",
                    help="also write the compiled (and trained) model as a Hugging Face folder + compression.json, "
                         "the checkpoint cllm-train exports: it compiles back to the same codes for any target")
    ap.add_argument("--eval-windows", type=int, default=4, metavar="N",
                    help="WikiText-2 windows for the validation report (0 = skip; all = 148 for SmolLM2 @2048)")
    ap.add_argument("--seqlen", type=int, default=2048, help="evaluation window length in tokens")
    ap.add_argument("--no-lower", action="store_true",
                    help="stop at the portable model.cllm: no backend build (TVM/GGUF); validated in PyTorch")
    ap.add_argument("--validate", action="store_true",
                    help="after compiling: cross-backend equivalence, latency p50/p95 vs llama.cpp on the same IR, "
                         "memory, energy (measured or labelled estimate); writes report.json + report.html")
    ap.add_argument("--repeats", type=int, default=20, help="latency repeats for --validate (default 20)")
    ap.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
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
    from ..errors import TargetError
    from ..targets.host import pick_host_target
    try:
        choice = pick_host_target()
        host = f"this CPU: {choice.target.name} ({choice.reason})"
    except TargetError as e:
        host = f"none on this CPU ({e.message})"
    out.print(f"[bold]{'host':<22}[/] the best x86 target the compiling CPU runs (the default); {host}",
              highlight=False, markup=True, soft_wrap=True)
    for t in TARGETS.values():
        out.print(f"[bold]{t.name:<22}[/] {t.description}  [dim]backend={t.backend}, {t.memory_gb:g} GB, "
                  f"{t.bandwidth_gbs:g} GB/s[/]\n{'':24}plan facts: {t.extra.get('plan', {})}"
                  f"\n{'':24}fast (-p default): {t.default_pipeline}", highlight=False)


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
    from ..default_model import default_model_path
    from ..errors import CllmError
    from ..targets.host import resolve_target
    args.threads = setup_threads(args.threads)  # a bad count is refused before any work
    resolved = [resolve_target(t.strip()) for t in (args.targets or args.target).split(",") if t.strip()]
    targets = [t for t, _ in resolved]
    for _, why in resolved:
        if why:
            step(why)
    if len({t.name for t in targets}) != len(targets) or not targets:
        raise CllmError(f"--targets {args.targets!r}: give distinct target names", hint="see --list-targets")
    model_path = Path(args.model) if args.model else default_model_path()
    if not model_path.exists():  # fail before any work or output
        from ..errors import LoadError
        raise LoadError(f"{model_path} does not exist",
                        hint="give a Hugging Face model folder, a .gguf file, or no MODEL for the default")
    if args.eval_windows < 0 or args.repeats < 2:
        raise CllmError("--eval-windows must be >= 0 and --repeats >= 2")
    from functools import cache

    from ..loading import load_model
    source = cache(lambda: load_model(model_path))  # read once, and only when a plan needs its size
    jobs = [(t, *_passes(args, t, source)) for t in targets]  # every plan before any work
    if args.checkpoint is not None:
        _check_checkpoint(args, [p for _, passes, _ in jobs for p in passes])
    stem = model_path.stem.split(".")[0]
    if not args.targets:
        t, passes, plan = jobs[0]
        res = _compile_one(args, model_path, t, passes, plan, args.out or Path("out") / f"{stem}-{t.name}", ())
        console.print(f"[green]artifact written:[/] {res.out}", highlight=False)
        if args.checkpoint is not None:
            from ..training.checkpoint import export_ir
            step(f"writing the checkpoint {args.checkpoint}")
            export_ir(load_model(res.out / "model.cllm"), args.checkpoint, force=args.force)
            console.print(f"[green]checkpoint written:[/] {args.checkpoint}", highlight=False)
        return _verdict([res])
    from ..multi import compile_targets
    plans = {t.name: (passes, plan) for t, passes, plan in jobs}
    manifest, results = compile_targets(
        model_path, targets, args.out or Path("out") / f"{stem}-multi",
        lambda t, out, reuse: _compile_one(args, model_path, t, *plans[t.name], out, reuse), args.force, step)
    for r in results:
        out.print(f"{r.report['target']:<24} {r.report['bits_per_weight']:.3f} bits/weight  {r.report['pipeline']}",
                  highlight=False, markup=False)
    console.print(f"[green]manifest written:[/] {manifest}", highlight=False)
    return _verdict(results)


def _check_checkpoint(args: argparse.Namespace, passes: list) -> None:
    """--checkpoint is refused before any work when it cannot be written."""
    from ..errors import TrainError
    if args.targets:
        raise TrainError("--checkpoint goes with one --target", hint="the checkpoint does not depend on the target")
    from ..atomic import check_replaceable
    check_replaceable(args.checkpoint, args.force)
    bad = [p for p in passes if p.yields not in (None, "quant", "dense", "encoded")]
    if bad:
        raise TrainError(f"--checkpoint holds uniform quant grids and float tensors; '{bad[0].name}' leaves "
                         f"{bad[0].yields} tensors",
                         hint="compile with quant/gptq (and reconstruct, distill), or drop --checkpoint")


def _verdict(results: list[Any]) -> int:
    """1 when --validate found backends disagreeing beyond the tolerance (the artifact is kept)."""
    bad = [r for r in results if not r.report.get("validation", {}).get("equivalence", {}).get("passed", True)]
    for r in bad:
        console.print(f"[bold red]error:[/] cross-backend check failed for {r.out}: "
                      f"{r.report['validation']['equivalence']['verdict']}", highlight=False, soft_wrap=True)
    return 1 if bad else 0


def _passes(args: argparse.Namespace, target: Any, source: Any) -> tuple[list, dict | None]:
    """The pass list for `target`: --recipe, --pipeline, --budget, or the target's plan."""
    from ..pipeline import load_recipe, parse_pipeline
    if args.recipe:
        passes = load_recipe(args.recipe)
    elif args.pipeline:
        passes = parse_pipeline(target.default_pipeline if args.pipeline == "default" else args.pipeline)
    elif args.budget is not None:
        passes = parse_pipeline((GGUF_BUDGET_PIPELINE if target.backend == "gguf" else BUDGET_PIPELINE)
                                .format(budget=args.budget))
    else:
        from ..targets.plan import plan_for_model
        plan = plan_for_model(target, source()).as_dict()
        passes = parse_pipeline(plan["pipeline"])
        return with_training(passes, args.reconstruct, args.distill), plan
    if args.budget is not None:
        apply_budget(passes, args.budget)
    return with_training(passes, args.reconstruct, args.distill), None


def with_training(passes: list, reconstruct: bool, distill: bool = False) -> list:
    """`passes` with default `reconstruct` and/or `distill` passes (in that order) before the
    first lossless pass (entropy coding), unless the pipeline already has them."""
    have = {p.name for p in passes}
    new = [PASSES[n]() for n, on in (("reconstruct", reconstruct), ("distill", distill)) if on and n not in have]
    at = next((i for i, p in enumerate(passes) if p.lossless), len(passes))
    return passes[:at] + new + passes[at:]


def _compile_one(args: argparse.Namespace, model_path: Path, target: Any, passes: list, plan: dict | None,
                 outdir: Path, reuse: tuple) -> Any:
    from ..compiler import compile_model
    with progress() as prog:
        etask = prog.add_task("evaluate", total=args.eval_windows or 1, visible=False)
        wtask = prog.add_task("write model.cllm", total=None, visible=False)

        def eval_progress(done: int, total: int) -> None:
            prog.update(etask, completed=done, total=total, visible=True)
        result = compile_model(model_path, target, passes, outdir, force=args.force,
                               eval_windows=args.eval_windows, seqlen=args.seqlen, dump_ir=args.dump_ir,
                               instruments=[_ProgressInstrument(prog)], on_step=step,
                               eval_progress=eval_progress, lower=not args.no_lower,
                               write_progress=lambda name: prog.update(wtask, advance=1, visible=True),
                               reuse=reuse, plan=plan, threads=args.threads)
        if args.validate:
            from ..validation.local import ValidateOptions, validate_local
            vtask = prog.add_task("latency repeats", total=args.repeats, visible=False)
            result.report["validation"] = validate_local(
                outdir, target, ValidateOptions(repeats=args.repeats), on_step=step,
                progress=lambda d, n: prog.update(vtask, completed=d, total=n, visible=True))
    from ..validation.report import write_reports
    write_reports(outdir, result.report)
    print_summary(result.report, result.out)
    if args.validate:
        from .validate import print_validation
        print_validation(result.report)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
