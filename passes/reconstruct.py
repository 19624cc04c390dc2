"""`reconstruct`: block-wise compression-aware training of the formats earlier passes chose.

One decoder layer at a time (training/blockwise.py): its inputs come from the layers before it
as already compressed (the model as it will run), its target is the float layer's output —
on the float model's own inputs (`target=float`, which also undoes error carried in from earlier
layers) or on the same compressed inputs (`target=same`). By default the stored codes stay and
the fp16 scales/mins and norms train (`codes=learn`: straight-through latent weights too), always
on the exact stored grid, so the artifact computes what training computed. Tensors in other formats (codebooks, low-rank, N:M) stay as they are and are
part of the block the trained ones learn around.

    calibrate,gptq{bits=3},quant{bits=8,match=embed|lm_head},reconstruct,entropy

With `resume=DIR` each finished layer is saved there (training/blockcache.py) and a rerun of the
same compile continues after the last one: layer i depends only on layers before it and a seed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import layerwise
from ..ir import Model
from ..passes_base import Param, PassStats, measure, register_pass
from ..reprs import Dense, Quantized
from ..training.blockcache import LayerCache
from ..training.blocktrain import train_block
from ..training.blockwise import BlockConfig, BlockResult
from .calibrate import DATA_HELP, DEFAULT_TEXT, _weights_fingerprint, prepared_windows
from .trainingpass import TrainingPass, stored_norm


@register_pass
class ReconstructPass(TrainingPass):
    name = "reconstruct"
    help = "block-wise training: each decoder layer's stored grid (scales, norms; codes=learn: codes too) learns the float layer"
    params = (
        Param("tokens", int, 8192, "training tokens per layer (cached inputs)", check=lambda n: n >= 2),
        Param("seqlen", int, 512, "tokens per sequence", check=lambda n: n >= 2),
        Param("data", str, DEFAULT_TEXT, DATA_HELP),
        Param("steps", int, 60, "optimizer steps per layer (200 measured worse end to end)", check=lambda n: n >= 0),
        Param("batch", int, 2, "sequences per step", check=lambda n: n >= 1),
        Param("codes", str, "keep", "keep: the stored codes stay, scales/mins and norms train; learn: straight-through "
              "latent weights may change codes too", choices=("keep", "learn")),
        Param("lr", float, 2e-5, "learning rate of the latent weights (codes=learn; Adam)", check=lambda a: 0 <= a <= 1),
        Param("lr_scale", float, 3e-3, "learning rate of the log-scales and mins (Adam)", check=lambda a: 0 <= a <= 1),
        Param("lr_norm", float, 3e-4, "learning rate of the RMSNorm weights (Adam; 0: norms stay)", check=lambda a: 0 <= a <= 1),
        Param("target", str, "float", "float: the float layer on float inputs; same: on the compressed inputs",
              choices=("float", "same")),
        Param("holdout", int, 2, "sequences held out to judge trained vs starting grid", check=lambda n: n >= 1),
        Param("resume", str, "", "folder for per-layer results: a rerun with the same model, pipeline and text "
              "takes finished layers from it (the same bytes as an uninterrupted run)"),
    )
    default_match = "linear"

    def prepare(self, model: Model) -> None:
        """The text, and a resume folder left by a run with other settings, are refused here."""
        _, text_sha = prepared_windows(self, model)
        if self.args["resume"]:
            LayerCache(Path(self.args["resume"]), self._key(model, text_sha)).check(model.config.num_layers)

    def run(self, model: Model) -> PassStats:
        stats = PassStats(self.spec())
        if self.ctx.simulating or model.config.num_layers == 0:
            return stats
        a = self.args
        ids, text_sha = prepared_windows(self, model)
        cache = LayerCache(Path(a["resume"]), self._key(model, text_sha)) if a["resume"] else None
        cfg = BlockConfig(steps=a["steps"], batch=a["batch"], lr=a["lr"], lr_scale=a["lr_scale"],
                          lr_norm=a["lr_norm"], codes=a["codes"], holdout=a["holdout"])
        results = self._layers(model, ids, cfg, stats, cache)
        trained = sum(r.trained for r in results)
        gain = [r.loss_after / r.loss_before for r in results if r.loss_before > 0]
        stats.notes.append(f"{trained}/{len(results)} layers improved on held-out sequences; output error x"
                           f"{sum(gain) / max(len(gain), 1):.3f} on average ({ids.numel()} tokens, {a['steps']} steps each)")
        return stats

    def _key(self, model: Model, text_sha: str) -> str:
        """What a layer's result depends on: the model, every pass up to this one, the text."""
        upto = self.ctx.pipeline[:self.ctx.pipeline.index(self) + 1] if self in self.ctx.pipeline else [self]
        specs = [p.spec() for p in upto]
        specs[-1] = specs[-1].replace(f"resume={self.args['resume']}", "resume=")  # where it is kept is not what it is
        source = self.ctx.model_sha256 or _weights_fingerprint(model)  # a model built in memory has no file hash
        return json.dumps({"model": source, "pipeline": specs, "text": text_sha}, sort_keys=True)

    def _layers(self, model: Model, ids: torch.Tensor, cfg: BlockConfig, stats: PassStats,
                cache: LayerCache | None) -> list[BlockResult]:
        same = self.args["target"] == "same"
        cos_sin = layerwise.rotary(model, ids.shape[1])
        hq = layerwise.embed(model, ids)
        hf = hq if same else layerwise.embed(model, ids, self._original(model))
        results = []
        for i in range(model.config.num_layers):
            prefix = f"model.layers.{i}."
            ref = layerwise.layer(model, i, self._original(model))
            blk = layerwise.layer(model, i)
            target = hf = _apply(ref, hq if same else hf, cos_sin)
            linears, reps = {}, {}
            for path in layerwise.LINEARS:
                node = model.tensors.get(f"{prefix}{path}.weight")
                if node is not None and self.matches(node) and isinstance(node.rep, Quantized):
                    linears[node.name], reps[node.name] = blk.get_submodule(path), node.rep
            if linears:
                norms = {f"{prefix}{k}": p for k, p in blk.named_parameters()  # norms stored plainly train too
                         if k.endswith("layernorm.weight") and isinstance(model.tensors[f"{prefix}{k}"].rep, Dense)}
                done = cache.load(i, reps, norms) if cache else None
                if done is None:  # train_block leaves the block holding what it keeps
                    floats = {name: self.ctx.original(model.tensors[name]) for name in linears}
                    done = train_block(blk, lambda x: blk(x, position_embeddings=cos_sin), linears, reps,
                                       floats, norms, hq, target, cfg)
                    if cache:
                        cache.save(i, *done)
                else:
                    with torch.no_grad():
                        for name, lin in linears.items():
                            lin.weight.copy_(done[0][name].decode())
                keep, keep_norms, res = done
                results.append(res)
                for name, rep in keep.items():
                    model.tensors[name].rep = rep
                    stats.tensors.append(measure(model.tensors[name], self.ctx.original(model.tensors[name]), self.ctx))
                if res.trained:
                    self._store_norms(model, keep_norms, norms)
            with torch.no_grad():
                hq = _apply(blk, hq, cos_sin)
            if self.on_tensor is not None:
                self.on_tensor(f"{prefix}self_attn.q_proj.weight")
        return results

    def _store_norms(self, model: Model, trained: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> None:
        """Trained norm weights, rounded to the dtype each is stored in, so that the next layers
        are trained on exactly what the artifact will compute."""
        for name, w in trained.items():
            model.tensors[name].rep = stored_norm(model, name, w)
            with torch.no_grad():
                params[name].copy_(model.tensors[name].rep.decode())

    def _original(self, model: Model) -> layerwise.Weights:
        return lambda name: self.ctx.original(model.tensors[name])

    def count(self, model: Model) -> int:
        return model.config.num_layers


@torch.no_grad()
def _apply(layer: torch.nn.Module, h: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
           chunk: int = 8) -> torch.Tensor:
    return torch.cat([layer(h[s:s + chunk], position_embeddings=cos_sin) for s in range(0, h.shape[0], chunk)])
