"""The compile summary table (size, bits/weight, PPL before/after, KLD)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from .ui import out


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def estimate_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The speed estimates, each labelled with its model; beside a measured speed on this host, the
    estimate for this host and its ratio to the measurement."""
    est = report["estimates"]
    rows = []
    here = est.get("decode_tokens_per_s_this_host")
    if here:
        sp = next((b["speed"] for b in (report.get("eval") or {}).get("backends", {}).values() if "speed" in b), None)
        vs = f" ({here['value'] / sp['decode_tok_s']:.2f}x the measured)" if sp else ""
        rows.append((f"decode tok/s on this host, {here['threads']} thread(s) (estimated: roofline with compute)",
                     f"{here['value']:,.0f}{vs}"))
    on = est.get("decode_tokens_per_s")
    if on:
        rows.append((f"decode tok/s on {report['target']}, whole device (estimated: roofline with compute)",
                     f"{on['value']:,.0f}"))
    else:  # reports written before the compute-aware model
        rows.append(("decode tok/s on target (estimated, bandwidth-only roofline)",
                     f"{est['decode_tokens_per_s_bandwidth_bound']:,.0f}"))
    return rows


def larger_than_source(report: dict[str, Any]) -> str | None:
    """Why the artifact came out larger than the file it was compiled from (None when it did not):
    the source's rate and the tensors that take the most bytes above it (issue 19)."""
    src, size, params = report.get("source_bytes"), report["artifact_bytes"], report["params"]
    if not src or size <= src:
        return None
    rate = src * 8 / params
    over = sorted((t for t in report.get("tensors", []) if t.get("bpw", 0) > rate),
                  key=lambda t: -t.get("stored_bytes", t["bits"] / 8))
    worst = ", ".join(f"{t['name']} ({t['rep']}, {t['bpw']:.2f} bits/weight)" for t in over[:3])
    why = f"these tensors are stored above that rate: {worst}" if over else "headers and per-tensor metadata"
    return (f"the artifact ({_mb(size)}) is larger than its source ({_mb(src)}, {rate:.2f} bits/weight): {why}; "
            "quantize them in the pipeline (e.g. match=embed|lm_head) or give --budget")


def print_summary(report: dict[str, Any], folder: Path) -> None:
    params = report["params"]
    t = Table(title=f"cllm: {folder}  (target {report['target']})", show_header=True)
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    src = report.get("source_bytes")
    t.add_row("size", f"{_mb(src)} source / {_mb(report['f16_bytes'])} f16", _mb(report["artifact_bytes"]))
    t.add_row("bits/weight (file bytes x 8 / params)", f"{src * 8 / params:.3f} source" if src else "-",
              f"{report['bits_per_weight']:.3f}")
    ev = report.get("eval")
    if ev:
        r, c = ev["reference"], ev["compressed"]
        t.add_row(f"PPL wikitext-2 ({c['windows']}x{c['seqlen']} tok of {c['tokens_total']})",
                  f"{r['ppl']:.3f}", f"{c['ppl']:.3f} ({100 * (c['ppl'] / r['ppl'] - 1):+.2f}%)")
        t.add_row("KLD mean / p99 vs uncompressed", "0", f"{c['kld_mean']:.5f} / {c['kld_p99']:.4f}")
        t.add_row("top-1 agreement", "1", f"{c['top1_agree']:.4f}")
        for name, b in (ev.get("backends") or {}).items():
            x = b["vs_torch_same_weights"]
            t.add_row(f"{name}: PPL / KLD vs uncompressed", "",
                      f"{b['ppl']:.3f} ({100 * (b['ppl'] / r['ppl'] - 1):+.2f}%) / {b['kld_mean']:.5f}")
            t.add_row(f"{name} vs torch, same weights: KLD / top-1", "", f"{x['kld_mean']:.5f} / {x['top1_agree']:.4f}")
            sp = b["speed"]
            t.add_row(f"{name} prefill / decode tok/s (measured, {sp['threads']} thread)", "",
                      f"{sp['prefill_tok_s']:,.0f} / {sp['decode_tok_s']:,.0f}")
    else:
        t.add_row("PPL / KLD", "-", "not evaluated (--eval-windows 0)")
    low = report["lowering"]
    if isinstance(low, dict):
        t.add_row(f"{low.get('backend', '?')} file ({low.get('file', '?')}): size / bits/weight", "",
                  f"{_mb(low.get('bytes', 0))} / {low.get('bits_per_weight', 0):.3f}")
    t.add_row("compile time / peak RSS", "", f"{report['timing']['compile_s']:.1f} s / {report['peak_rss_mib']:.0f} MiB")
    for label, value in estimate_rows(report):
        t.add_row(label, "", value)
    out.print(t)
    out.print(f"[dim]pipeline: {report['pipeline']}[/]", highlight=False)
    larger = larger_than_source(report)
    if larger:
        out.print(f"[yellow]note:[/] {larger}", highlight=False, soft_wrap=True)
    if isinstance(low, dict):
        types = ", ".join(f"{k} x{v}" for k, v in low.get("tensor_types", {}).items())
        out.print(f"[dim]{low.get('file', '?')}: {types}; runtime: {low.get('runtime', '?')}[/]", highlight=False)
        for n in low.get("notes", []):
            out.print(f"[yellow]note:[/] {n}", highlight=False, soft_wrap=True)
    else:
        out.print(f"[dim]{low}[/]", highlight=False)
