"""cllm-eval: WikiText-2 perplexity (paper protocol) and KLD against the uncompressed model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from .ui import THREADS_HELP, out, progress, run_cli, setup_threads, step

EPILOG = """\
examples:
  cllm-eval out/smollm2-x86-avx512                 # artifact vs its source model, all windows
  cllm-eval model.gguf --max-windows 2 --seqlen 512
  cllm-eval art1/ art2/ --reference model.gguf      # several artifacts, one reference pass
Protocol: joined WikiText-2 test text, non-overlapping windows of --seqlen, PPL = exp(mean NLL).
For an artifact the reference defaults to the source model recorded in it (if still on disk).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="cllm-eval", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="artifact folders, .cllm files, HF folders or .gguf files")
    ap.add_argument("--reference", help="uncompressed model for KLD (default: the artifact's source)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, help="evaluate only N windows (quick runs)")
    ap.add_argument("--first-window", type=int, default=0, help="start at this window (to shard a run)")
    ap.add_argument("--json", type=Path, help="write results as JSON here")
    ap.add_argument("--kld-out", type=Path, help="save per-token KLD/top-1 arrays (.npz) to merge shards")
    ap.add_argument("--no-report", action="store_true", help="do not update the artifact's report.json")
    ap.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    from ..backends.torch_ref import build_torch_model
    from ..errors import EvalError
    if not 8 <= args.seqlen <= 1 << 16 or args.first_window < 0 or (args.max_windows or 0) < 0:
        raise EvalError(f"--seqlen {args.seqlen}, --first-window {args.first_window}, --max-windows "
                        f"{args.max_windows}: out of range",
                        hint="--seqlen from 8 to 65536 (the paper protocol: 2048); window counts >= 0")
    from ..evaluate import evaluate, tokenize, wikitext_text
    from ..loading import load_model
    setup_threads(args.threads)
    models = {m: load_model(m) for m in args.models}
    ref_path = args.reference or _recorded_source(args.models[0])
    nets = {}
    step(f"building {len(models)} model(s){' + reference ' + ref_path if ref_path else ''}")
    ref_net = build_torch_model(load_model(ref_path)) if ref_path else None
    if ref_net is not None:
        nets["reference"] = ref_net  # scored too: its PPL is the baseline, computed once
    for name, m in models.items():
        nets[name] = build_torch_model(m)
    tok = models[args.models[0]].tokenizer
    ids = tokenize(tok, wikitext_text())
    total = ids.numel() // args.seqlen
    if args.first_window >= total:
        raise EvalError(f"--first-window {args.first_window} is past the last window ({total})")
    n = min(total - args.first_window, args.max_windows or total)
    step(f"{ids.numel()} tokens, {total} windows of {args.seqlen}; evaluating windows "
         f"{args.first_window}..{args.first_window + n - 1}")
    with progress() as prog:
        task = prog.add_task("evaluate", total=n)
        res = evaluate(nets, ids, reference=ref_net, seqlen=args.seqlen, max_windows=n,
                       first_window=args.first_window, progress=lambda w: prog.advance(task),
                       keep_kld=args.kld_out is not None)
    results = {k: v.to_dict() for k, v in res.items() if not k.endswith(":kld")}
    _print(results, ref_path)
    if args.json:
        from ..atomic import write_bytes
        write_bytes(args.json, json.dumps({"reference": ref_path, "results": results}, indent=1).encode())
    if args.kld_out:
        np.savez(args.kld_out, **{f"{k}|{f}": v[f] for k, v in res.items() if k.endswith(":kld") for f in v})
    if not args.no_report:
        _update_reports(results, ref_path)
    return 0


def _recorded_source(artifact: str) -> str | None:
    """The source path from the artifact folder's manifest, if that file still exists."""
    from ..safeio import read_json
    man = Path(artifact) / "manifest.json"
    if not Path(artifact).is_dir() or not man.exists():
        return None
    src = read_json(man, inside=Path(artifact)).get("source")
    p = src.get("path") if isinstance(src, dict) else None
    return p if isinstance(p, str) and Path(p).exists() else None


def _print(results: dict, ref_path: str | None) -> None:
    t = Table(title=f"WikiText-2 test{' vs ' + ref_path if ref_path else ''}")
    for col in ("model", "windows x seqlen", "tokens", "PPL", "KLD mean", "KLD p99", "top-1"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name, r in results.items():
        f = (lambda v, p: "-" if v is None else f"{v:.{p}f}")
        t.add_row(name, f"{r['windows']}x{r['seqlen']}", f"{r['tokens_total']}", f"{r['ppl']:.3f}",
                  f(r["kld_mean"], 5), f(r["kld_p99"], 4), f(r["top1_agree"], 4))
    out.print(t)


def _update_reports(results: dict, ref_path: str | None) -> None:
    from ..atomic import write_bytes
    for name, r in results.items():
        rep = Path(name) / "report.json"
        if Path(name).is_dir() and rep.exists():
            from ..safeio import read_json
            doc = read_json(rep, 64 << 20, inside=Path(name))
            doc.setdefault("eval_runs", []).append({"reference": ref_path, "result": r})
            write_bytes(rep, json.dumps(doc, indent=1).encode())


if __name__ == "__main__":
    raise SystemExit(main())
