"""Report figures (matplotlib, Agg, PNG bytes): rate-distortion, per-layer bits, latency, energy.
Estimated values are drawn hatched and labelled 'estimated'; nothing here measures anything."""
from __future__ import annotations

import io
import json
import re
from importlib import resources
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

KIND_STYLE = {"cllm": ("tab:blue", "o"), "llama.cpp": ("tab:orange", "s"), "onnxruntime": ("tab:green", "^")}
ROLE = re.compile(r"(?:model\.)?layers\.(\d+)\.(.+)\.weight$")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def reference_sweep() -> dict[str, Any]:
    return json.loads(resources.files("cllm_compiler").joinpath("data/rd_reference.json").read_text())


def rd_curve(report: dict[str, Any], sweep: dict[str, Any]) -> tuple[bytes, str]:
    """KLD vs bits/weight (file bytes): this artifact among the packaged sweep and its peers."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    same = sweep.get("model_sha256") == report.get("source_sha256")
    sibling = not same and sweep.get("params") == report["params"]
    caption = "no reference sweep for this model: only this artifact's point"
    if same or sibling:
        for kind, (color, marker) in KIND_STYLE.items():
            pts = [p for p in sweep["points"] if p["kind"] == kind and p["kld"] > 0]
            if pts:
                ax.scatter([p["bpw"] for p in pts], [p["kld"] for p in pts], c=color, marker=marker, s=22,
                           alpha=0.9 if same else 0.35, label=f"{kind} sweep")
        caption = (f"sweep: {sweep['model']}, {sweep['windows']} windows x {sweep['seqlen']} ({sweep['source']})"
                   + ("" if same else "; a sibling checkpoint with the same architecture, not this artifact's source"))
    kld = (report.get("eval") or {}).get("compressed", {}).get("kld_mean")
    if kld:
        ax.scatter([report["bits_per_weight"]], [kld], c="red", marker="*", s=220, zorder=5, label="this artifact")
    ax.set(xlabel="bits per weight (file bytes x 8 / params)", ylabel="KLD vs uncompressed (WikiText-2)",
           yscale="log", title="Rate-distortion")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig), caption


def bits_heatmap(tensors: list[dict[str, Any]]) -> bytes:
    """Stored bits/weight per layer (rows) and projection (columns)."""
    import numpy as np
    cells: dict[tuple[int, str], float] = {}
    for t in tensors:
        m = ROLE.match(t["name"])
        if m and len(t["shape"]) == 2:
            cells[(int(m.group(1)), m.group(2).split(".")[-1])] = t["bpw"]
    layers = sorted({k[0] for k in cells}) or [0]
    roles = sorted({k[1] for k in cells}) or ["-"]
    grid = np.full((len(layers), len(roles)), np.nan)
    for (layer, role), v in cells.items():
        grid[layers.index(layer), roles.index(role)] = v
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.18 * len(layers) + 1.2)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(roles)), roles, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
    ax.set(ylabel="layer", title="Stored bits/weight per layer and projection")
    fig.colorbar(im, ax=ax, label="bits/weight")
    return _png(fig)


def latency_plot(latency: dict[str, Any]) -> bytes | None:
    runs = {k: v for k, v in latency.items() if "decode_ms_per_token" in v and v["decode_ms_per_token"].get("samples")}
    if not runs:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.6))
    names = list(runs)
    a.boxplot([runs[n]["prefill_ms"]["samples"] for n in names], tick_labels=names)
    a.set(title=f"prefill ({next(iter(runs.values()))['prompt_tokens']} tokens)", ylabel="ms")
    b.boxplot([runs[n]["decode_ms_per_token"]["samples"] for n in names], tick_labels=names)
    b.set(title="decode", ylabel="ms/token")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"latency over {runs[names[0]]['decode_ms_per_token']['repeats']} interleaved repeats (measured)")
    return _png(fig)


def energy_plot(energy: dict[str, Any]) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    labels, values, hatches = [], [], []
    for key in ("measured", "estimate"):
        r = energy.get(key) or {}
        if r.get("value") is not None:
            labels.append(f"{r['status']}" + (f"\n({r.get('power_mode')})" if r.get("power_mode") else ""))
            values.append(r["value"])
            hatches.append("//" if r["status"] == "estimated" else "")
    bars = ax.bar(range(len(values)), values, color=["tab:blue" if not h else "white" for h in hatches],
                  edgecolor="tab:blue", hatch=None)
    for bar, h in zip(bars, hatches):
        bar.set_hatch(h)
    ax.set_xticks(range(len(values)), labels)
    ax.set(ylabel="J/token", title="Decode energy per token" + ("" if energy.get("measured", {}).get("value") is not None
                                                              else " (no meter here: estimate only)"))
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)
