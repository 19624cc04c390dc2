"""cllm-validate: run a compiled artifact on a device and report how it behaves there.

Measures, with the meter named next to each number: cross-backend equivalence (every backend
available, same IR, same WikiText-2 tokens: pairwise KLD / top-1 against a tolerance), latency
(prefill, time to first token, decode: p50/p95 and CV over --repeats interleaved runs, and the
ratio to llama.cpp running the same IR in the same run), memory, a batch sweep, and energy
(NVML, Jetson rails, RAPL). What cannot be measured is an estimate from the target table,
labelled so, or listed under "not measured" with the reason. Writes report.json (schema-checked)
and report.html (self-contained, plots embedded) into the artifact, or into --out.

Devices: `local` (this machine), `rpc://HOST:PORT` (TVM RPC server: the package runs there),
`ssh://USER@HOST` (copies the artifact, runs `cllm-validate --device local` there), or a name
from the registry, ~/.config/cllm/devices.toml ($CLLM_CONFIG_DIR or $XDG_CONFIG_HOME/cllm).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .ui import THREADS_HELP, console, out, progress, run_cli, setup_threads, step

EPILOG = """\
examples:
  cllm-validate out/smollm2-x86-avx2 --device local --threads 2  # this machine, 2 threads
  cllm-validate orin/ --device orin                               # a registry name
  cllm-validate out/smollm2-x86-avx2 --device rpc://127.0.0.1:9090 --repeats 20
  cllm-validate art/ --device ssh://me@laptop.local --out reports/laptop

devices.toml (in ~/.config/cllm/):
  [devices.orin]
  target = "jetson-orin-nano-8gb"
  transport = "tvm-rpc"          # tvm-rpc | ssh | local
  address = "rpc://192.168.1.20:9090"
  timeout_s = 120                # per remote step
  power_mode = "15W"

  [devices.laptop]
  transport = "ssh"
  address = "me@laptop.local"
  connect_timeout_s = 10

exit status: 0 all measured steps passed; 1 cross-backend equivalence failed; 2 the device could
not be used (the report is still written, saying what was not measured).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="cllm-validate", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path, help="artifact folder written by cllm-compile")
    ap.add_argument("--device", default="local", help="local, rpc://HOST:PORT, ssh://USER@HOST or a registry name")
    ap.add_argument("--registry", type=Path, help="device registry TOML (default ~/.config/cllm/devices.toml)")
    ap.add_argument("--tokens", type=int, default=256, help="WikiText-2 tokens for the cross-backend check (default 256)")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens timed for prefill (default 64)")
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens decoded per timed run (default 16)")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats for p50/p95/CV (default 20)")
    ap.add_argument("--backends", default="torch,tvm,llama.cpp,onnxruntime,triton",
                    help="backends for the cross-backend check (default: all available)")
    ap.add_argument("--tol-kld", type=float, default=0.02, help="max mean KLD between two backends (default 0.02)")
    ap.add_argument("--timeout", type=float, help="seconds per remote step (overrides the registry's timeout_s)")
    ap.add_argument("--out", type=Path, help="write report.json/report.html here instead of into the artifact")
    ap.add_argument("--json", help="also write the validation section here ('-' = stdout, for ssh transport)")
    ap.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    setup_threads(args.threads)
    from dataclasses import replace

    from ..devices import resolve
    from ..errors import CllmError, LoadError
    if args.tokens < 2 or args.prompt < 8 or args.repeats < 2 or args.new_tokens < 1:
        raise CllmError("--tokens must be >= 2, --prompt >= 8, --repeats >= 2, --new-tokens >= 1")
    report = _compile_report(args.artifact)
    dev = resolve(args.device, args.registry)
    if args.timeout:
        dev = replace(dev, timeout_s=args.timeout)
    from ..targets import get_target
    target = get_target(report["target"])
    from ..container import read_container
    from ..energy import estimate
    from ..measure import weight_stream_bytes
    weight_bytes = weight_stream_bytes(read_container(args.artifact / "model.cllm"))
    failure: CllmError | None = None
    try:
        rec = _run(args, dev, target)
    except CllmError as e:
        if isinstance(e, LoadError):
            raise
        from ..validation.remote import unreachable
        rec, failure = unreachable(dev, e.format(), target, weight_bytes), e
    rec["energy"].setdefault("estimate", estimate(target, weight_bytes))
    report["validation"] = rec
    if args.json == "-":
        sys.stdout.write(json.dumps(rec) + "\n")
        return 2 if failure else 0
    folder = args.out or args.artifact
    folder.mkdir(parents=True, exist_ok=True)
    from ..validation.report import write_reports
    jpath, hpath = write_reports(folder, report)
    if args.json:
        from ..atomic import write_bytes
        write_bytes(Path(args.json), json.dumps(rec, indent=1).encode())
    print_validation(report)
    console.print(f"[green]report:[/] {jpath}  {hpath}", highlight=False)
    if failure:
        raise failure  # the clear one-line error, after the report that says what was not measured
    return 0 if rec.get("equivalence", {}).get("passed", True) else 1


def _compile_report(artifact: Path) -> dict[str, Any]:
    from ..errors import LoadError
    path = artifact / "report.json"
    if not (artifact / "model.cllm").is_file() or not path.is_file():
        raise LoadError(f"{artifact} is not a cllm artifact folder (no model.cllm / report.json)",
                        hint="give a folder written by cllm-compile")
    from ..safeio import read_json
    doc = read_json(path, 64 << 20, inside=artifact)
    doc.pop("validation", None)
    return doc


def _run(args: argparse.Namespace, dev: Any, target: Any) -> dict[str, Any]:
    if dev.transport == "tvm-rpc":
        from ..validation.remote import validate_rpc
        return validate_rpc(args.artifact, dev, args.tokens, args.prompt, args.repeats, step)
    if dev.transport == "ssh":
        from ..validation.remote import validate_ssh
        extra = ["--tokens", str(args.tokens), "--prompt", str(args.prompt), "--repeats", str(args.repeats),
                 "--new-tokens", str(args.new_tokens), "--backends", args.backends, "--tol-kld", str(args.tol_kld)]
        return validate_ssh(args.artifact, dev, extra, step)
    from ..validation.equivalence import Tolerance
    from ..validation.local import ValidateOptions, validate_local
    opts = ValidateOptions(tokens=args.tokens, prompt=args.prompt, new_tokens=args.new_tokens, repeats=args.repeats,
                           backends=tuple(b.strip() for b in args.backends.split(",")),
                           tol=Tolerance(kld_mean=args.tol_kld))
    with progress() as prog:
        task = prog.add_task("latency repeats", total=args.repeats, visible=False)
        return validate_local(args.artifact, target, opts, on_step=step,
                              progress=lambda d, n: prog.update(task, completed=d, total=n, visible=True))


def print_validation(report: dict[str, Any]) -> None:
    from rich.table import Table
    v = report["validation"]
    t = Table(title=f"validation: {report['target']} on {v['device'].get('name', '?')}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for name, lat in v["latency"].items():
        if "decode_ms_per_token" not in lat:
            t.add_row(f"{name} latency", f"not measured: {lat.get('reason', '')}")
            continue
        p, d = lat["prefill_ms"], lat["decode_ms_per_token"]
        t.add_row(f"{name} prefill ms p50 / p95 (CV), {lat['prompt_tokens']} tok",
                  f"{p['p50']:.2f} / {p['p95']:.2f} ({p['cv']:.1%})")
        t.add_row(f"{name} decode ms/token p50 / p95 (CV), n={d['repeats']}",
                  f"{d['p50']:.2f} / {d['p95']:.2f} ({d['cv']:.1%})")
        if "prefill_tok_s" in lat:
            threads = v.get("machine", {}).get("threads", "?")
            t.add_row(f"{name} prefill / decode tok/s (measured, p50, {threads} thread(s))",
                      f"{lat['prefill_tok_s']:,.0f} / {lat['decode_tok_s']:,.1f}")
    for name, r in (v.get("latency_ratio_vs_peer") or {}).items():
        t.add_row(f"{name} speed vs llama.cpp (same IR, same run)", f"decode {r['decode']:.2f}x, prefill {r['prefill']:.2f}x")
    eq = v.get("equivalence")
    if eq:
        for p in eq["pairs"]:
            t.add_row(f"{p['a']} ~ {p['b']}: KLD / top-1" + ("" if p["checked"] else " (info)"),
                      f"{p['kld_mean']:.2e} / {p['top1_agree']:.4f}")
        t.add_row("cross-backend verdict", eq["verdict"])
    for key in ("measured", "estimate"):
        r = v["energy"].get(key)
        if r:
            t.add_row(f"energy J/token ({r['status']})", "-" if r["value"] is None else f"{r['value']:.4g}")
    for k, r in v["memory"].items():
        val = r["value"]
        if isinstance(val, dict):  # KV cache by context length
            val = ", ".join(f"{n} tok: {b / 2**20:,.1f} MiB" for n, b in val.items())
        t.add_row(f"memory {k} ({r['status']})", "-" if val is None else val if isinstance(val, str)
                  else f"{val / 2**20:,.1f} MiB")
    out.print(t)
    for line in v.get("not_measured", []):
        console.print(f"[yellow]not measured:[/] {line}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    raise SystemExit(main())
