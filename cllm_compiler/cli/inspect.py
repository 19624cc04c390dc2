"""cllm-inspect: per-tensor table of an artifact, bits/weight, and hash verification."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rich.table import Table

from .ui import out, run_cli

EPILOG = """\
bits/weight is always total file bytes x 8 / parameter count (headers, scales and
tokenizer included); the per-tensor column counts that tensor's payload only. For
rans-coded tensors the last column shows the codes' order-0 entropy (from the stored
frequency table) next to the bits actually stored per code.
Exit status is 2 when any checksum fails, naming the damaged tensor.
"""


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="cllm-inspect", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", help="artifact folder or .cllm file")
    ap.add_argument("--no-verify", action="store_true", help="skip sha256 verification")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = ap.parse_args(argv)
    from ..container import ContainerFile
    from ..errors import ContainerError
    path = Path(args.artifact)
    f = path / "model.cllm" if path.is_dir() else path
    if not f.exists():
        raise ContainerError(f"{f} does not exist", hint="give an artifact folder or a .cllm file")
    cf = ContainerFile(f)
    if not args.no_verify:
        cf.verify()
    size = f.stat().st_size
    params = int(cf.header["num_params"])
    rows = []
    for rec in cf.header["tensors"]:
        numel = math.prod(rec["shape"])
        bits = 8 * sum(b["length"] for b in rec["buffers"])
        rep = cf.rep(rec, check_decode=False)
        ent = rep.entropy_bits() if hasattr(rep, "entropy_bits") else None
        codes = next((b["length"] for b in rec["buffers"] if b["name"] == "codes"), None)
        rows.append({"name": rec["name"], "shape": rec["shape"], "rep": rep.describe(), "bpw": bits / numel,
                     "ratio_vs_f16": 16 * numel / max(bits, 1), "codes_entropy_bits": ent,
                     "codes_stored_bits": None if codes is None else codes * 8 / numel})
    summary = {"file": str(f), "file_bytes": size, "params": params, "bits_per_weight": size * 8 / params,
               "tensors": len(rows), "verified": not args.no_verify}
    if args.json:
        out.print_json(json.dumps({"summary": summary, "tensors": rows}))
        return 0
    t = Table(title=str(f))
    for col in ("tensor", "shape", "representation", "bits/weight", "x vs f16", "codes: entropy / stored"):
        t.add_column(col, justify="left" if col in ("tensor", "representation") else "right")
    for r in rows:
        ent = ("-" if r["codes_entropy_bits"] is None
               else f"{r['codes_entropy_bits']:.4f} / {r['codes_stored_bits']:.4f}")
        t.add_row(r["name"], "x".join(map(str, r["shape"])), r["rep"], f"{r['bpw']:.3f}", f"{r['ratio_vs_f16']:.2f}", ent)
    out.print(t)
    out.print(f"file {size} bytes, {params} params -> [bold]{summary['bits_per_weight']:.4f} bits/weight[/]"
              f" ({'all sha256 verified' if summary['verified'] else 'not verified'})", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
