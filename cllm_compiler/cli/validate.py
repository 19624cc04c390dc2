"""cllm-validate: run a compiled TVM package on a real device over TVM RPC and report latency and quality.

On the device, start TVM's RPC server (same TVM version as the package's tvm.json says):
    python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090
then, here:
    cllm-validate out/smollm2-jetson-orin-nano-8gb --device rpc://orin.local:9090

The package is uploaded, its weights copied, and the device measures prefill/decode latency
with its own clock (p50/p95 over --repeats). Logits come back for KLD / top-1 / PPL against
the torch reference of the same artifact on this host. Memory and energy cannot be read over
TVM RPC: they are reported as estimates from the target table and labelled so.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .ui import console, out, run_cli, setup_threads, step

EPILOG = """\
examples:
  cllm-validate out/smollm2-x86-avx512 --device rpc://127.0.0.1:9090
  cllm-validate orin/ --device orin-nano --registry devices.toml --tokens 512 --repeats 20
devices.toml:
  [devices.orin-nano]
  url = "rpc://192.168.1.20:9090"
  target = "jetson-orin-nano-8gb"
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="cllm-validate", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path, help="artifact folder with a tvm/ package (cllm-compile --target ...)")
    ap.add_argument("--device", required=True, help="rpc://HOST:PORT of a TVM RPC server, or a registry name")
    ap.add_argument("--registry", type=Path, default=Path("devices.toml"), help="device registry (TOML)")
    ap.add_argument("--tokens", type=int, default=256, help="WikiText-2 tokens scored for quality (default 256)")
    ap.add_argument("--prompt", type=int, default=128, help="prefill length timed (default 128)")
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats for p50/p95 (default 10)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a remote step may take before failing")
    ap.add_argument("--json", type=Path, help="also write the report here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    setup_threads()
    from ..backends.tvm_backend import PACKAGE_DIR
    from ..backends.tvm_rpc import RemoteSession, parse_device
    from ..backends.tvm_run import read_manifest
    from ..errors import CllmError
    from ..validate import quality, estimates
    pkg = args.artifact / PACKAGE_DIR
    man = read_manifest(pkg)
    device = parse_device(args.device, args.registry)
    if args.tokens < 2 or args.prompt < 1 or args.repeats < 1:
        raise CllmError("--tokens must be >= 2, --prompt and --repeats >= 1")
    step(f"connecting to {device['url']} and uploading {pkg} ({man['target']})")
    sess = RemoteSession(device, pkg, timeout=args.timeout)
    step("connected; measuring latency on the device")
    report = {"device": device, "target": man["target"], "latency": sess.latency(args.prompt, args.repeats)}
    step(f"scoring {args.tokens} WikiText-2 tokens (logits back over RPC)")
    report["quality"] = quality(args.artifact / "model.cllm", sess.logits, args.tokens)
    report["estimates"] = estimates(man, pkg)
    sess.close()
    _print(report)
    if args.json:
        from ..atomic import write_bytes
        write_bytes(args.json, json.dumps(report, indent=1).encode())
    return 0


def _print(r: dict) -> None:
    from rich.table import Table
    t = Table(title=f"cllm-validate: {r['target']} on {r['device']['url']}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    lat, q = r["latency"], r["quality"]
    t.add_row("prefill latency p50 / p95 (ms)", f"{lat['prefill_ms_p50']:.2f} / {lat['prefill_ms_p95']:.2f} ({lat['prompt_tokens']} tok)")
    t.add_row("decode latency p50 / p95 (ms/token)", f"{lat['decode_ms_p50']:.2f} / {lat['decode_ms_p95']:.2f}")
    t.add_row("prefill / decode tok/s (measured)", f"{lat['prefill_tok_s']:,.0f} / {lat['decode_tok_s']:,.1f}")
    t.add_row(f"KLD vs torch, same weights ({q['tokens']} tok)", f"{q['kld_mean']:.2e}")
    t.add_row("top-1 agreement vs torch", f"{q['top1_agree']:.4f}")
    t.add_row("PPL device / torch", f"{q['ppl_device']:.3f} / {q['ppl_torch']:.3f}")
    e = r["estimates"]
    t.add_row("memory (estimated: weights + KV cache)", f"{e['memory_mib']:.0f} MiB")
    t.add_row("energy", e["energy"])
    out.print(t)
    console.print(f"[dim]{lat['label']}[/]", highlight=False)


if __name__ == "__main__":
    raise SystemExit(main())
