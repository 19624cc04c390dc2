"""report.html: one file, no network (plots are base64 PNG), every estimate marked as such."""
from __future__ import annotations

import base64
import html
from typing import Any

from . import plots

CSS = """body{font:14px system-ui,sans-serif;margin:24px auto;max-width:980px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;max-width:100%}
td{word-break:break-word}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
.est{background:#fff3cd;color:#7a5b00;padding:0 4px;border-radius:3px;font-size:12px}
.nm{background:#f8d7da;color:#721c24;padding:0 4px;border-radius:3px;font-size:12px}
.ok{color:#1a7f37}.bad{color:#b00}figure{margin:8px 0}figcaption{font-size:12px;color:#555}"""

JS = """window.addEventListener('load',function(){var n=0;document.querySelectorAll('img[data-plot]')
.forEach(function(i){if(i.complete&&i.naturalWidth>0)n++});document.body.setAttribute('data-plots-loaded',n)});"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(png: bytes | None, name: str, caption: str = "") -> str:
    if png is None:
        return f"<p class='nm'>{_e(name)}: not measured</p>"
    b64 = base64.b64encode(png).decode()
    return (f"<figure><img data-plot='{name}' alt='{_e(name)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _val(r: dict[str, Any] | None, fmt: str = "{:.4g}") -> str:
    if not r:
        return "<span class='nm'>not measured</span>"
    if r["status"] == "not_measured":
        return f"<span class='nm'>not measured</span> {_e(r['reason'])}"
    v = r["value"]
    text = ", ".join(f"{k}: {fmt.format(x)}" for k, x in v.items()) if isinstance(v, dict) else fmt.format(v)
    tag = (f" <span class='est'>estimated</span> <small>{_e(r['model'])}</small>" if r["status"] == "estimated"
           else f" <small>measured: {_e(r['meter'])}</small>")
    return f"{_e(text)} {_e(r['unit'])}{tag}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{_e(x)}</th>" for x in head)
    return "<table><tr>" + h + "</tr>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                                                 for r in rows) + "</table>"


def _summary(r: dict[str, Any]) -> str:
    rows = [["target / backend", _e(f"{r['target']} / {r['backend']}")], ["pipeline", _e(r["pipeline"])],
            ["bits/weight (file bytes x 8 / params)", f"{r['bits_per_weight']:.3f} ({r['artifact_bytes']:,} bytes)"]]
    if r.get("plan"):
        rows.append(["plan", "<br>".join(_e(x) for x in r["plan"]["reasons"])])
    ev = r.get("eval")
    if ev:
        c, ref = ev["compressed"], ev["reference"]
        rows += [["PPL (uncompressed -> this)", f"{ref['ppl']:.3f} -> {c['ppl']:.3f} ({c['windows']}x{c['seqlen']} tokens)"],
                 ["KLD mean / p99, top-1", f"{c['kld_mean']:.4f} / {c['kld_p99']:.3f}, {c['top1_agree']:.4f}"]]
    est = r["estimates"]
    for key, where in (("decode_tokens_per_s_this_host", "this host"), ("decode_tokens_per_s", "target")):
        if key in est:
            rows.append([f"decode tok/s on {where} <span class='est'>estimated</span>",
                         f"{est[key]['value']:,.0f} <small>{_e(est[key]['model'])}</small>"])
    if "decode_tokens_per_s" not in est:
        rows.append(["decode tok/s on target <span class='est'>estimated</span>",
                     f"{est['decode_tokens_per_s_bandwidth_bound']:,.0f} <small>{_e(est['label'])}</small>"])
    return _table(["", "value"], rows)


def _validation(v: dict[str, Any]) -> str:
    dev = v["device"]
    parts = [f"<h2>Device and machine</h2><p>{_e(dev.get('name'))} ({_e(dev.get('transport'))} {_e(dev.get('address', ''))})"
             + (f" <span class='nm'>{_e(dev['error'])}</span>" if dev.get("error") else "") + "</p>", _table(["fact", "value"],
             [[_e(k), _e(x)] for k, x in v["machine"].items()])]
    eq = v.get("equivalence")
    if eq:
        cls = "ok" if eq["passed"] else "bad"
        rows = [[_e(p["a"]), _e(p["b"]), f"{p['kld_mean']:.2e}", f"{p['kld_max']:.2e}", f"{p['top1_agree']:.4f}",
                 "checked" if p["checked"] else "info (not the same weights)",
                 "<span class='ok'>pass</span>" if p["pass"] else "<span class='bad'>FAIL</span>"] for p in eq["pairs"]]
        parts.append(f"<h2>Cross-backend equivalence ({eq['tokens']} WikiText-2 tokens)</h2>"
                     f"<p class='{cls}'>{_e(eq['verdict'])}</p>" +
                     _table(["A", "B", "KLD mean", "KLD max", "top-1", "", "verdict"], rows) +
                     _table(["backend", "status"], [[_e(k), _e(b.get("reason") or b.get("runner"))]
                                                    for k, b in eq["backends"].items()]))
    rows = []
    for name, lat in v["latency"].items():
        if "decode_ms_per_token" not in lat:
            rows.append([_e(name), f"<span class='nm'>not measured</span> {_e(lat['reason'])}", "", "", ""])
            continue
        p, d = lat["prefill_ms"], lat["decode_ms_per_token"]
        rows.append([_e(name), f"{p['p50']:.2f} / {p['p95']:.2f} (CV {p['cv']:.1%})",
                     f"{d['p50']:.2f} / {d['p95']:.2f} (CV {d['cv']:.1%})", f"{lat['decode_tok_s']:.1f}", str(d["repeats"])])
    ratio = "".join(f"<p>{_e(k)} vs llama.cpp, same run: decode {x['decode']:.2f}x, prefill {x['prefill']:.2f}x "
                    "(p50 speed ratio, &gt; 1 = faster)</p>" for k, x in v.get("latency_ratio_vs_peer", {}).items())
    peer = v.get("latency_peer")
    if peer:
        ratio += (f"<p><small>llama.cpp peer: {_e(', '.join(f'{k} x{n}' for k, n in peer['gguf_tensor_types'].items()))}, "
                  f"{peer['gguf_bytes']:,} bytes, KV {_e(peer['kv_cache'])}; {_e(peer['note'])}</small></p>")
    parts.append("<h2>Latency (measured on this machine)</h2>" + _table(
        ["runner", "prefill ms p50 / p95", "decode ms/token p50 / p95", "decode tok/s", "repeats"], rows) + ratio +
        _img(plots.latency_plot(v["latency"]), "latency", "box = interquartile range; whiskers 1.5 IQR"))
    e = v["energy"]
    parts.append("<h2>Energy</h2>" + _table(["", "J/token"], [["measured", _val(e["measured"], "{:.4g}")],
                                                             ["estimate", _val(e["estimate"], "{:.4g}")]]) +
                 _img(plots.energy_plot(e), "energy", "hatched = estimated from the target table"))
    mem = [[_e(k), _val(r, "{:,.0f}")] for k, r in v["memory"].items()]
    if v.get("batch_sweep"):
        mem.append(["decode tokens/s by batch (torch reference)", _val(v["batch_sweep"], "{:.1f}")])
    parts.append("<h2>Memory and batch sweep</h2>" + _table(["", "value"], mem))
    nm = v.get("not_measured") or []
    parts.append("<h2>Not measured</h2>" + ("<ul>" + "".join(f"<li>{_e(x)}</li>" for x in nm) + "</ul>" if nm
                                           else "<p>everything above was measured or is marked estimated</p>"))
    return "".join(parts)


def render(report: dict[str, Any]) -> str:
    rd, caption = plots.rd_curve(report, plots.reference_sweep())
    body = [f"<h1>cllm report: {_e(report['target'])}</h1>", _summary(report), "<h2>Rate-distortion</h2>",
            _img(rd, "rd", caption), "<h2>Per-layer bits</h2>", _img(plots.bits_heatmap(report["tensors"]), "bits")]
    if report.get("validation"):
        body.append(_validation(report["validation"]))
    else:
        body.append("<h2>Validation</h2><p class='nm'>not run (cllm-compile --validate, or cllm-validate ART)</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cllm report {_e(report['target'])}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}<script>{JS}</script></body></html>")
