"""Issue 19, item 5: GPTQ against round-to-nearest on the same grid, by calibration text kind
and amount, on the healed and on the original SmolLM2 (int4 and int3, group 128, linears only;
the tied embedding stays float so the numbers isolate the linears' rounding).

Texts: the packaged Moby-Dick, the shared training mix (State of the Union, Shakespeare,
Moby-Dick: the first 95% of each file, the last 5% being E1's held-out text) and the packaged
`mix` built from it (scripts/make_calib_mix.py), at 16,384 and 65,536 tokens in 512-token windows. KLD and PPL against each model's own
float weights on WikiText-2 test windows (evaluation only). Resumable: rows already in the JSON
are kept.

  python bench/calib_text.py                       # all rows (about an hour on two cores)
  python bench/calib_text.py --models healed --bits 4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HEALED = SHARED / "models/smollm2-135m-instruct-healed.Q8_0.gguf"
MIX = ("sotu-1790-2018.txt", "shakespeare-complete.txt", "moby-dick.txt")
TEXTS = {"moby-dick 16k": ("moby-dick", 16384), "mix 16k": ("MIX", 16384), "mix 64k": ("MIX", 65536),
         "packaged mix 16k": ("mix", 16384), "packaged mix 64k": ("mix", 65536)}


def original() -> Path:
    sys.path.insert(0, str(ROOT))
    from cllm_compiler.default_model import default_model_path
    return default_model_path()


def train_split(work: Path) -> Path:
    """The first 95% of each training text (by characters, cut at a line end) in one folder."""
    out = work / "mix95"
    out.mkdir(parents=True, exist_ok=True)
    for name in MIX:
        text = (SHARED / "data/train" / name).read_text(encoding="utf-8")
        cut = text.rfind("\n", 0, int(len(text) * 0.95))
        (out / name).write_text(text[:cut], encoding="utf-8")
    return out


def run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with log.open("w") as f:
        if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"error: {' '.join(cmd[:3])} failed; see {log}")


def pipeline(args: argparse.Namespace, m: str, bits: int, text: str | None, mix: Path) -> str:
    if text is None:
        return f"quant{{bits={bits},group=128,match=linear}}"
    data, tokens = TEXTS[text]
    cache = args.work / f"cal-{m}-{text.replace(' ', '-')}.safetensors"
    return (f"calibrate{{data={mix if data == 'MIX' else data},tokens={tokens},seqlen=512,cache={cache}}},"
            f"gptq{{bits={bits},group=128,match=linear}}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="healed,original")
    ap.add_argument("--bits", default="4,3")
    ap.add_argument("--texts", default=",".join(TEXTS), help="which of: " + ", ".join(TEXTS))
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "bench/results/calib_text_work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/calib_text.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    done = {(r["model"], r["bits"], r["method"]) for r in rows}
    mix = train_split(args.work)
    paths = {"healed": HEALED, "original": original()}
    for m in args.models.split(","):
        for bits in map(int, args.bits.split(",")):
            todo = [(meth, t) for meth, t in [("rtn", None)] + [(f"gptq {t}", t) for t in args.texts.split(",")]
                    if (m, bits, meth) not in done]
            arts = {}
            for method, text in todo:
                name = f"{m}-int{bits}-{method.replace(' ', '-')}"
                arts[method] = (args.work / name, pipeline(args, m, bits, text, mix))
                print(f"calib_text: {name} ...", flush=True)
                run(["cllm-compile", str(paths[m]), "--no-lower", "--eval-windows", "0", "--force",
                     "-p", arts[method][1], "-o", str(arts[method][0])], args.work / f"{name}.log")
            if not arts:
                continue
            res = args.work / f"{m}-int{bits}.json"
            run(["cllm-eval", *[str(a) for a, _ in arts.values()], "--reference", str(paths[m]),
                 "--max-windows", str(args.windows), "--no-report", "--json", str(res)],
                args.work / f"{m}-int{bits}.eval.log")
            got = json.loads(res.read_text())["results"]
            for method, (art, pipe) in arts.items():
                r = got[str(art)]
                rows.append({"model": m, "bits": bits, "method": method, "ppl": r["ppl"], "kld": r["kld_mean"],
                             "top1": r["top1_agree"], "ref_ppl": got["reference"]["ppl"], "pipeline": pipe})
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"windows": args.windows, "rows": rows}, indent=1))
            tmp.replace(args.out)
    report(rows, args.out.with_suffix(".md"))


def report(rows: list[dict], out: Path) -> None:
    lines = ["| model | bits | method | PPL | KLD | KLD vs RTN | top-1 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rtn = next((x["kld"] for x in rows if (x["model"], x["bits"], x["method"]) == (r["model"], r["bits"], "rtn")), None)
        ratio = f"{r['kld'] / rtn:.2f}" if rtn else "–"
        lines.append(f"| {r['model']} | {r['bits']} | {r['method']} | {r['ppl']:.3f} | {r['kld']:.4f} | {ratio} | {r['top1']:.3f} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
