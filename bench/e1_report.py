"""Table and plot of bench/e1.py's results (bench/results/e1.md, e1.png)."""
from __future__ import annotations

from pathlib import Path

GOALS = {"4": 0.06, "3": 0.25, "2.5": 0.60, "2": 1.50}  # issue 19's absolute delta-PPL goals
TRAINED = ("block", "block+e2e")
SLACK = 0.25  # post-training points compared: file size >= the trained model's, <= budget + SLACK
SAME = 0.005  # bits/weight: retrained fp16 scales entropy-code a little differently (same plan, same codes)


def best_ptq(rows: dict, bpw: float, budget: float) -> dict | None:
    """The best post-training result (any kind) at equal (within SAME) or larger size, up to budget + SLACK."""
    ptq = [r for r in rows.values() if not r["name"].endswith(TRAINED) and bpw - SAME <= r["bpw"] <= budget + SLACK]
    return min(ptq, key=lambda r: r["dppl"], default=None)


def _held(r: dict) -> str:
    return " / ".join(f"{v['dppl']:+.1%}" for v in r.get("heldout", {}).values()) or "-"


def table(rows: dict) -> list[str]:
    out = ["| budget | method | bits/weight | PPL | ΔPPL | KLD | top-1 | held-out ΔPPL (SOTU / Shakespeare) | wall s | peak RSS MiB | tokens per stage |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows.values(), key=lambda r: (-float(r["budget"] or 0), r["bpw"], r["name"])):
        method = r["name"].split("-", 1)[1] if r["budget"] else r["name"]
        toks = ", ".join(f"{k} {v}" for k, v in r.get("tokens", {}).items())
        out.append(f"| {r['budget'] or 'fixed'} | {method} | {r['bpw']:.3f} | {r['ppl']:.2f} | {r['dppl']:+.1%} | "
                   f"{r['kld']:.4f} | {r['top1']:.3f} | {_held(r)} | {r['wall_s']:.0f} | {r['peak_rss_mib']:.0f} | {toks} |")
    return out


def verdicts(rows: dict) -> list[str]:
    out = ["| budget | trained | ΔPPL | best post-training at ≥ its size | ΔPPL | ratio (goal ≤ 0.5) | absolute goal |",
           "|---|---|---|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda kv: -float(kv[1]["budget"] or 0)):
        if not name.endswith(TRAINED):
            continue
        b = r["budget"]
        p = best_ptq(rows, r["bpw"], float(b))
        goal = GOALS.get(b)
        met = "" if goal is None else (f"≤ {goal:+.0%}: " + ("met" if r["dppl"] <= goal else "missed"))
        if p is None:
            out.append(f"| {b} | {name.split('-', 1)[1]} | {r['dppl']:+.1%} | none in range | - | - | {met} |")
            continue
        ratio = f"{r['dppl'] / p['dppl']:.2f}" if p["dppl"] > 0 else "-"
        out.append(f"| {b} | {name.split('-', 1)[1]} | {r['dppl']:+.1%} | {p['name']} ({p['bpw']:.3f}) | "
                   f"{p['dppl']:+.1%} | {ratio} | {met} |")
    return out


def plot(rows: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[dict]] = {}
    for r in rows.values():
        series.setdefault(r["name"].split("-", 1)[1] if r["budget"] else "fixed-rate post-training", []).append(r)
    for label, rs in sorted(series.items()):
        rs.sort(key=lambda r: r["bpw"])
        style = "x" if label.startswith("fixed") else "o-"
        ax.plot([r["bpw"] for r in rs], [max(r["dppl"], 1e-3) * 100 for r in rs], style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("bits/weight (file bytes x 8 / parameters)")
    ax.set_ylabel("ΔPPL vs float, % (WikiText-2 test)")
    ax.set_title("E1: healed SmolLM2-135M, compression-aware training vs post-training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_report(rows: dict, out: Path) -> None:
    lines = ["# E1: compression-aware training vs post-training (bench/e1.py)", "",
             "Each budget's rows share one allocator plan; trained rows keep its codes' sizes. ΔPPL on",
             "WikiText-2 test windows; held-out ΔPPL on text nothing here trains or calibrates on.",
             f"Post-training rows compared with a trained one: file ≥ the trained file − {SAME} bits/weight",
             f"(the same plan: retrained fp16 scales code a little differently) and ≤ the budget + {SLACK}.", "",
             *verdicts(rows), "", *table(rows), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    if rows:
        plot(rows, out.with_suffix(".png"))
