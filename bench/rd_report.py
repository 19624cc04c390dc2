"""Table, goal ratios and PNG for `rd_sweep.py` (also runnable alone on an existing work folder).

    python bench/rd_report.py [--work bench/results/rd_work] [--windows 8]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load(work: Path, facts: dict[str, dict]) -> tuple[list[dict], dict]:
    rows, ref = [], None
    for name, f in facts.items():
        ev = work / f"eval-{name}.json"
        if not ev.exists():
            continue
        doc = json.loads(ev.read_text())
        ref = doc["reference"]
        r = doc["result"]
        bpw = f.get("bpw") or f["bytes"] * 8 / f["params"]
        rows.append({"name": name, "kind": f["kind"], "bpw": bpw, "bytes": f["bytes"], "ppl": r["ppl"],
                     "kld": r["kld_mean"], "top1": r["top1_agree"], "compile_s": f.get("compile_s") or f.get("quantize_s"),
                     "peak_rss_mib": f.get("peak_rss_mib"), "passes": f.get("passes")})
    for r in rows:
        r["dppl"] = 100 * (r["ppl"] / ref["ppl"] - 1)
    return sorted(rows, key=lambda r: r["bpw"]), ref


def interp(points: list[tuple[float, float]], x: float) -> float | None:
    """Peer ΔPPL at bpw x, interpolated in log(ΔPPL) between its two nearest types; None outside."""
    pts = sorted((b, max(d, 1e-3)) for b, d in points)
    for (b0, d0), (b1, d1) in zip(pts, pts[1:]):
        if b0 <= x <= b1:
            t = (x - b0) / (b1 - b0)
            return math.exp(math.log(d0) * (1 - t) + math.log(d1) * t)
    return None


def goals(rows: list[dict]) -> list[str]:
    peers = [(r["bpw"], r["dppl"]) for r in rows if r["kind"] == "llama.cpp"]
    out = []
    for target in (3.5, 2.5):
        ours = [r for r in rows if r["kind"] == "cllm" and abs(r["bpw"] - target) <= 0.15]
        if not ours or not peers:
            out.append(f"~{target} bpw: no cllm point within 0.15 bpw" if not ours else f"~{target} bpw: no peer points")
            continue
        best = min(ours, key=lambda r: r["dppl"])
        peer = interp(peers, best["bpw"])
        if peer is None:
            lo = min(peers)
            out.append(f"~{target} bpw: best cllm {best['name']} at {best['bpw']:.3f} bpw, ΔPPL {best['dppl']:+.2f}%; "
                       f"llama.cpp has no type this small (its smallest, {lo[0]:.3f} bpw, has ΔPPL {lo[1]:+.2f}%)")
        else:
            out.append(f"~{target} bpw: best cllm {best['name']} at {best['bpw']:.3f} bpw, ΔPPL {best['dppl']:+.2f}% vs "
                       f"llama.cpp interpolated {peer:+.2f}% → ratio {best['dppl'] / peer:.2f} (goal ≤ 0.5)")
    for kind in ("llama.cpp", "onnxruntime"):  # every peer point vs the best cllm point no larger than it
        for p in sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["bpw"]):
            ours = [r for r in rows if r["kind"] == "cllm" and r["bpw"] <= p["bpw"]]
            if not ours:
                out.append(f"{p['name']} ({p['bpw']:.3f} bpw, ΔPPL {p['dppl']:+.2f}%): no cllm point this small")
                continue
            b = min(ours, key=lambda r: r["dppl"])
            ratio = b["dppl"] / p["dppl"] if p["dppl"] > 0 else float("nan")
            out.append(f"{p['name']} ({p['bpw']:.3f} bpw, ΔPPL {p['dppl']:+.2f}%) vs best cllm at ≤ its size: "
                       f"{b['name']} ({b['bpw']:.3f} bpw, ΔPPL {b['dppl']:+.2f}%) → ΔPPL ratio {ratio:.2f}")
    return out


# >= 4-bit formats whose blocks align with the 32-weight Q4_1 grid SmolLM2 was released on: the
# healed model still sits near that grid (issue 3 measured ~42 dB SQNR for a Q4_1 re-quantization),
# so these points look better on it than they would on a model trained off-grid.
ALIGNED = ("llama.cpp-Q8_0", "llama.cpp-Q6_K", "llama.cpp-Q5_K_M", "llama.cpp-Q4_K_M", "rtn-int4-g32")


def write_report(facts: dict[str, dict], work: Path, out: Path, windows: int) -> None:
    rows, ref = load(work, facts)
    if not rows:
        raise SystemExit("nothing evaluated yet")
    lines = [f"Reference: PPL {ref['ppl']:.3f} on {ref['windows']} windows × {ref['seqlen']} "
             f"({ref['tokens_scored']} scored tokens of WikiText-2 test)", "",
             "| config | kind | bits/weight (file) | MB | PPL | ΔPPL % | KLD | top-1 | compile/quantize s | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cs = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        rss = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        lines.append(f"| {r['name']}{' †' if r['name'] in ALIGNED else ''} | {r['kind']} | {r['bpw']:.3f} | {r['bytes'] / 1e6:.1f} | {r['ppl']:.3f} | "
                     f"{r['dppl']:+.2f} | {r['kld']:.4f} | {r['top1']:.3f} | {cs} | {rss} |")
    lines += ["", "† ≥ 4-bit format aligned with the source model's 32-weight Q4_1 grid (see the caveat above).",
              "", *[f"- {g}" for g in goals(rows)]]
    lines += ["", "Compile cost per pass (seconds; peak RSS of the whole compile):", "",
              "| config | compile s | peak RSS MiB | passes (s) |", "|---|---:|---:|---|"]
    for r in rows:
        if r["passes"]:
            per = ", ".join(f"{p['pass'].split('{')[0]} {p['seconds']:.1f}" for p in r["passes"])
            lines.append(f"| {r['name']} | {r['compile_s']:.1f} | {r['peak_rss_mib']:.0f} | {per} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"reference": ref, "windows": windows, "rows": rows}, indent=1))
    _plot(rows, ref, out.with_suffix(".png"))
    print("\n".join(lines))


def _plot(rows: list[dict], ref: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6))
    styles = {"llama.cpp": ("s", "tab:red"), "onnxruntime": ("^", "tab:green"), "cllm": ("o", "tab:blue")}
    for kind, (marker, color) in styles.items():
        pts = [r for r in rows if r["kind"] == kind]
        ax.scatter([r["bpw"] for r in pts], [r["ppl"] for r in pts], marker=marker, color=color, label=kind)
        for r in pts:
            ax.annotate(r["name"].replace("llama.cpp-", ""), (r["bpw"], r["ppl"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    budget = sorted((r for r in rows if r["name"].startswith("budget-")), key=lambda r: r["bpw"])
    ax.plot([r["bpw"] for r in budget], [r["ppl"] for r in budget], color="tab:blue", lw=1, label="cllm --budget")
    peers = sorted((r for r in rows if r["kind"] == "llama.cpp"), key=lambda r: r["bpw"])
    ax.plot([r["bpw"] for r in peers], [r["ppl"] for r in peers], color="tab:red", lw=1)
    ax.axhline(ref["ppl"], color="gray", ls="--", lw=1, label=f"float reference {ref['ppl']:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (file bytes × 8 / parameters)")
    ax.set_ylabel(f"WikiText-2 PPL ({ref['windows']}×{ref['seqlen']} tokens)")
    ax.set_title("SmolLM2-135M (healed): rate–distortion, cllm vs llama.cpp")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("bench/results/rd_work"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/rd_sweep"))
    ap.add_argument("--windows", type=int, default=8)
    a = ap.parse_args()
    write_report(json.loads((a.work / "facts.json").read_text()), a.work, a.out, a.windows)
