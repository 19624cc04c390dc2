"""`calibrate`: run calibration text through the model layer by layer and record, per linear,
the input Hessian proxy H = X^T X and mean |x| per channel (see `calibration.py`).

The text defaults to a public-domain book packaged with cllm (never WikiText test). Sequences
are `seqlen` tokens taken at evenly spaced offsets so that `tokens` covers the whole text. The
statistics go to `calibration.safetensors` in the artifact folder and are reused from there
(or from `cache=`) when the model, text, tokens and seqlen are the same.
"""
from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch

from .. import layerwise
from ..calibration import FILE, Calibration
from ..errors import PassError
from ..eval_guard import refuse_eval_text
from ..ir import Model
from ..passes_base import Param, Pass, PassStats, register_pass
from ..safeio import read_bytes

DEFAULT_TEXT = "mix"  # measured best for GPTQ (bench/calib_text.py): KLD -6% at int4, -10% at int3 vs Moby-Dick
PACKAGED = ("moby-dick", "mix")  # data/calib/<name>.txt (mix: scripts/make_calib_mix.py)
DATA_HELP = ("packaged 'moby-dick' (Melville) or 'mix' (State of the Union, Shakespeare and Moby-Dick "
             "passages), a .txt file or a folder of .txt files; never WikiText-2 test")


def calibration_text(spec: str) -> tuple[str, str]:
    """(text, sha256) of a packaged text, a .txt file or every .txt in a folder (sorted)."""
    if spec in ("", *PACKAGED):
        name = spec or DEFAULT_TEXT
        text = resources.files("cllm_compiler").joinpath(f"data/calib/{name}.txt").read_text(encoding="utf-8")
    else:
        p = Path(spec)
        files = sorted(p.glob("*.txt")) if p.is_dir() else [p]
        if not files:
            raise PassError(f"calibration text {spec} holds no .txt files",
                            hint="give data=FILE.txt or a folder of .txt files (e.g. ../shared/data/train)")
        text = "\n\n".join(read_bytes(f, 1 << 30, what=f"calibration text {f}", error=PassError)
                           .decode("utf-8", errors="replace") for f in files)
        refuse_eval_text(text, spec, PassError, use="calibrate")
    return text, hashlib.sha256(text.encode()).hexdigest()


def sample(ids: torch.Tensor, tokens: int, seqlen: int) -> torch.Tensor:
    """[n, seqlen] windows at evenly spaced offsets, n = ceil(tokens / seqlen)."""
    if ids.numel() < seqlen:
        raise PassError(f"calibration text has {ids.numel()} tokens, fewer than seqlen={seqlen}",
                        hint="give more text or a smaller seqlen")
    n = -(-tokens // seqlen)
    span = ids.numel() - seqlen
    starts = [i * span // max(n - 1, 1) for i in range(n)]
    return torch.stack([ids[s:s + seqlen] for s in starts])


def token_ids(model: Model, text: str) -> torch.Tensor:
    """`text` tokenized by the model's own tokenizer (ids checked against the embedding table)."""
    if model.tokenizer is None:
        raise PassError("the model has no tokenizer, so calibration text cannot be tokenized",
                        hint="give a model folder with tokenizer.json or a GGUF with its vocab")
    ids = torch.tensor(model.tokenizer.load().encode(text, add_special_tokens=False).ids, dtype=torch.long)
    if ids.numel() and int(ids.max()) >= model.config.vocab_size:
        raise PassError("the tokenizer yields ids beyond the embedding table", hint="tokenizer/model mismatch")
    return ids


def prepared_windows(p: Pass, model: Model) -> tuple[torch.Tensor, str]:
    """`p`'s text (its data, tokens and seqlen arguments) as windows, checked and tokenized once per
    compile (kept in the pass context: calibrate and the training passes usually share it). Text
    with fewer tokens than asked for is refused: its windows would repeat it, and a training pass
    would learn (and judge itself on) the same few sentences."""
    a = p.args
    key = (a["data"], a["tokens"], a["seqlen"])
    if key not in p.ctx.texts:
        text, sha = calibration_text(a["data"])
        ids = token_ids(model, text)
        if ids.numel() < a["tokens"]:
            raise PassError(f"{p.name}: the text '{a['data']}' has {ids.numel()} tokens, fewer than tokens={a['tokens']}",
                            hint="give more text (data=FOLDER of .txt files, e.g. ../shared/data/train) or lower tokens=")
        p.ctx.texts[key] = (sample(ids, a["tokens"], min(a["seqlen"], model.config.max_position_embeddings)), sha)
    return p.ctx.texts[key]


SINK = 1 / 32  # the first token's weight in H per token of its sequence (bench/gptq_sink.py)


@register_pass
class CalibratePass(Pass):
    name = "calibrate"
    help = "record per-linear input statistics (X^T X, mean |x|) on calibration text, layer by layer"
    params = (
        Param("tokens", int, 16384, "calibration tokens", check=lambda n: n >= 1),
        Param("seqlen", int, 512, "tokens per calibration sequence", check=lambda n: n >= 2),
        Param("data", str, DEFAULT_TEXT, DATA_HELP),
        Param("cache", str, "", "a calibration.safetensors (or folder holding one) to reuse when it matches"),
        Param("sink", float, SINK, "weight in H of each sequence's first token (the attention sink every later token "
              "reads), as a fraction of the sequence's length: 1/32 = 16 at 512 tokens; 0 = plain GPTQ",
              check=lambda a: 0.0 <= a <= 1.0),
    )
    provides = frozenset({"calibrated"})
    default_match = "all"
    analysis = True

    def run(self, model: Model) -> PassStats:
        stats = PassStats(self.spec())
        batch, text_sha = prepared_windows(self, model)
        key = {"model": self.ctx.model_sha256 or _weights_fingerprint(model), "text": text_sha,
               "tokens": self.args["tokens"], "seqlen": self.args["seqlen"], "sink": self.args["sink"]}
        cal = self._cached(key)
        if cal is None:
            cal = self._collect(model, batch, key)
            stats.notes.append(f"calibrated on {cal.tokens} tokens ({self.args['seqlen']}-token sequences)")
        else:
            stats.notes.append(f"calibration reused from cache ({cal.tokens} tokens)")
        if self.ctx.workdir is not None:
            cal.save(self.ctx.workdir / FILE)
        self.ctx.calib = cal
        return stats

    def _cached(self, key: dict) -> Calibration | None:
        places = [Path(self.args["cache"])] if self.args["cache"] else []
        for p in [*places, *self.ctx.reuse]:
            cal = Calibration.load(p / FILE if p.is_dir() else p, key)
            if cal is not None:
                return cal
        return None

    def prepare(self, model: Model) -> None:
        prepared_windows(self, model)

    def _collect(self, model: Model, batch: torch.Tensor, key: dict) -> Calibration:
        cal = Calibration(key)
        sink = sink_weights(batch.shape[1], self.args["sink"])

        def hook(name: str, x: torch.Tensor) -> None:
            cal.observe(name, x, sink.repeat(x.shape[0] // sink.numel()))
            if self.on_tensor is not None and name.endswith("q_proj.weight"):
                self.on_tensor(name)
        layerwise.run(model, batch, hook)
        if model.config.tie_word_embeddings:  # the embedding is also the output projection
            cal.alias["model.embed_tokens.weight"] = "lm_head.weight"
        cal.finish(batch.numel())
        return cal

    def count(self, model: Model) -> int:
        return model.config.num_layers


def sink_weights(seqlen: int, sink: float = 1 / 32) -> torch.Tensor:
    """Per-position weights of one calibration sequence in H: the first position carries
    max(1, sink x seqlen).
    Every window's first token becomes the model's attention sink (massive activations; all later
    tokens attend to it), so an error in its keys and values reaches every token, yet it is one
    row of H in `seqlen`: unweighted, GPTQ trades its error away for the bulk's and loses to RTN
    end to end although every layer's output error falls 3-4x (bench/gptq_diag.py). The weight
    grows with the sequence: measured best near 16 at 512 tokens and 64 at 2048 (bench/README.md)."""
    w = torch.ones(seqlen)
    w[0] = max(1.0, sink * seqlen)
    return w


def _weights_fingerprint(model: Model) -> str:
    """Hash of the model's weights, for models built in memory (no source file hash)."""
    h = hashlib.sha256()
    for node in model:
        h.update(node.name.encode())
        h.update(node.rep.decode().numpy().tobytes())
    return h.hexdigest()
