"""Perplexity on WikiText-2 test (paper protocol) and KLD against the uncompressed model.

Protocol (GPTQ/AWQ/HF guide): tokenize the joined test text once, cut it into
non-overlapping windows of `seqlen`, score every next-token prediction inside each window
(seqlen-1 per window), PPL = exp(mean NLL). KLD is KL(P_ref || P_model) per scored token.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import EvalError
from .ir import TokenizerSpec

_ROWS = 512  # positions per chunk when comparing distributions, to bound memory


@dataclass
class EvalResult:
    dataset: str
    seqlen: int
    windows: int
    windows_total: int
    tokens_total: int
    tokens_scored: int
    nll_sum: float
    ppl: float
    kld_mean: float | None = None
    kld_p99: float | None = None
    top1_agree: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def wikitext_text() -> str:
    return resources.files("cllm_compiler").joinpath("data/wikitext-2-raw-v1/wiki.test.joined.txt").read_text()


def tokenize(spec: TokenizerSpec | None, text: str) -> torch.Tensor:
    if spec is None:
        raise EvalError("the model has no tokenizer", hint="give a folder with tokenizer.json or a GGUF with its vocab")
    # One BOS at the start of the joined text when the model's tokenizer adds one (Llama-2 style).
    ids = spec.load().encode(text, add_special_tokens=spec.add_bos).ids
    return torch.tensor(ids, dtype=torch.long)


def _kld_rows(ref_logits: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    klds, agree = [], []
    for s in range(0, ref_logits.shape[0], _ROWS):
        lp = F.log_softmax(ref_logits[s:s + _ROWS].float(), -1)
        lq = F.log_softmax(logits[s:s + _ROWS].float(), -1)
        klds.append((lp.exp() * (lp - lq)).sum(-1).clamp_min(0))
        agree.append(lp.argmax(-1) == lq.argmax(-1))
    return torch.cat(klds), torch.cat(agree)


def evaluate(models: dict[str, torch.nn.Module], ids: torch.Tensor, reference: torch.nn.Module | None = None,
             seqlen: int = 2048, max_windows: int | None = None, first_window: int = 0,
             progress: Callable[[int], None] | None = None,
             keep_kld: bool = False, pairs: tuple[tuple[str, str], ...] = ()) -> dict[str, EvalResult | dict]:
    """Score each model on the same windows; KLD against `reference` when given.

    `pairs` (a, b) also compare model b against model a (e.g. two backends running the same
    weights), reported under "b|a" as {kld_mean, kld_p99, top1_agree}, from the same logits."""
    total = ids.numel() // seqlen
    if total == 0:
        raise EvalError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}", hint="lower --seqlen")
    last = total if max_windows is None else min(total, first_window + max_windows)
    nll = {k: 0.0 for k in models}
    kl: dict[str, list[torch.Tensor]] = {k: [] for k in models}
    ag: dict[str, list[torch.Tensor]] = {k: [] for k in models}
    pk: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = {p: [] for p in pairs}
    with torch.inference_mode():
        for w in range(first_window, last):
            x = ids[w * seqlen:(w + 1) * seqlen][None]
            ref = reference(x).logits[0, :-1] if reference is not None else None
            window: dict[str, torch.Tensor] = {}
            for name, net in models.items():
                logits = ref if net is reference else net(x).logits[0, :-1]
                window[name] = logits
                nll[name] += float(F.cross_entropy(logits.float(), x[0, 1:], reduction="sum"))
                if ref is not None:
                    k, a = _kld_rows(ref, logits)
                    kl[name].append(k)
                    ag[name].append(a)
            for a_name, b_name in pairs:
                pk[(a_name, b_name)].append(_kld_rows(window[a_name], window[b_name]))
            del window
            if progress:
                progress(w)
    out: dict[str, EvalResult | dict] = {}
    n = last - first_window
    for name in models:
        scored = n * (seqlen - 1)
        r = EvalResult("wikitext-2-raw-v1/test", seqlen, n, total, ids.numel(), scored, nll[name],
                       math.exp(nll[name] / scored))
        if kl[name]:
            allk = torch.cat(kl[name]).double()
            r.kld_mean, r.kld_p99 = float(allk.mean()), float(torch.quantile(allk.float(), 0.99))
            r.top1_agree = float(torch.cat(ag[name]).float().mean())
            if keep_kld:
                out[name + ":kld"] = {"kld": allk.float().numpy(), "agree": torch.cat(ag[name]).numpy()}
        out[name] = r
    for (a_name, b_name), parts in pk.items():
        k = torch.cat([p[0] for p in parts]).double()
        out[f"{b_name}|{a_name}"] = {"kld_mean": float(k.mean()), "kld_p99": float(torch.quantile(k.float(), 0.99)),
                                     "top1_agree": float(torch.cat([p[1] for p in parts]).float().mean()),
                                     "tokens": int(k.numel())}
    return out


def merge_results(parts: list[tuple[EvalResult, np.ndarray | None, np.ndarray | None]]) -> EvalResult:
    """Combine shards of one evaluation (e.g. windows split across processes)."""
    first = parts[0][0]
    nll = sum(p[0].nll_sum for p in parts)
    scored = sum(p[0].tokens_scored for p in parts)
    r = EvalResult(first.dataset, first.seqlen, sum(p[0].windows for p in parts), first.windows_total,
                   first.tokens_total, scored, nll, math.exp(nll / scored))
    if all(p[1] is not None for p in parts):
        k = np.concatenate([p[1] for p in parts]).astype(np.float64)
        r.kld_mean, r.kld_p99 = float(k.mean()), float(np.quantile(k, 0.99))
        r.top1_agree = float(np.concatenate([p[2] for p in parts]).mean())
    return r


def runner_speed(model: object, ids: torch.Tensor, prompt: int, new_tokens: int, repeats: int,
                 threads: int, label: str) -> dict[str, object]:
    """Median prefill/decode tokens/s of a backend runner (`model.speed(prompt_ids, n)`), measured."""
    import psutil
    prompt = min(prompt, model.n_ctx - new_tokens)  # type: ignore[attr-defined]
    runs = [model.speed(ids[:prompt].tolist(), new_tokens) for _ in range(repeats)]  # type: ignore[attr-defined]
    med = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
    return {**{k: round(v, 1) for k, v in med.items()}, "prompt_tokens": prompt, "new_tokens": new_tokens,
            "repeats": repeats, "threads": threads,
            "process_rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1), "label": label}
