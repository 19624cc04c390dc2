"""Seeded hostile-input generators for GGUF headers, Hugging Face folders and recipes.

``python -m tests.hostile_fuzz SEED N_PER_FAMILY OUT.json WORKDIR`` runs every case in this
process (address space capped at +2 GiB, 5 s alarm per case) and writes a summary: per family,
cases run, clean refusals, loads that succeeded, and every failure (an exception that is not a
CllmError, or a case over 5 s) with what was done to the input.
"""
from __future__ import annotations

import json
import math
import random
import resource
import shutil
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from tests.hostile import ARR, STR, U32, U64, _s, gguf_bytes, kv, micro_gguf_parts, micro_hf, status_kib

LIMIT_S = 5
JSON_VALUES: list[Any] = [None, True, False, -1, 0, 1, 2, 3, 7, 16, 31, 10**9, 10**30, 0.5, -0.0, 32.0, "x", "", [],
                          [1], [2, 2], {}, {"a": 1}, "LlamaForCausalLM", ["LlamaForCausalLM"], math.nan, math.inf]
CONFIG_KEYS = ["architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps",
               "max_position_embeddings", "tie_word_embeddings", "attention_bias", "bos_token_id", "eos_token_id",
               "rope_parameters", "model_type"]


class Hang(Exception):
    pass


def _alarm(*_: Any) -> None:
    raise Hang()


def _u64_at(b: bytearray, pos: int, value: int) -> None:
    if pos + 8 <= len(b):
        b[pos:pos + 8] = struct.pack("<Q", value % 2**64)


def gguf_case(rng: random.Random, path: Path) -> str:
    kvs, tensors = micro_gguf_parts()
    what = []
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["flip", "u64", "truncate", "kv", "dims", "type", "offset", "counts"])
        what.append(op)
        if op == "kv":
            key = rng.choice(["llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                              "llama.vocab_size", "tokenizer.ggml.tokens", "general.alignment", "x" * rng.randint(1, 9)])
            vt = rng.choice([U32, U64, STR, ARR, rng.randint(0, 20)])
            val = {U32: rng.choice([0, 1, 3, 2**32 - 1]), U64: rng.choice([0, 2**63]), STR: "\x00" * rng.randint(0, 3),
                   ARR: (rng.choice([STR, U32, ARR, 99]), b"\1" * rng.randint(0, 16), rng.choice([0, 1, 10**6, 2**62]))}
            kvs.insert(rng.randint(0, len(kvs)), kv(key, vt, val[vt]) if vt in val else
                       _s(key) + struct.pack("<I", vt) + b"\0" * rng.randint(0, 8))
        elif op == "dims" and tensors:
            i = rng.randrange(len(tensors))
            tensors[i] = (tensors[i][0], [rng.choice([0, 1, 32, 33, 2**40, 2**63]) for _ in range(rng.randint(0, 5))], tensors[i][2])
    forge: dict[str, Any] = {}
    if "type" in what:
        forge["qtype"] = rng.choice([1, 2, 8, 30, 39, 1000])
    if "offset" in what:
        forge["offsets"] = [rng.choice([0, 1, 32, 2**40]) for _ in tensors]
    if "counts" in what:
        forge[rng.choice(["n_tensors", "n_kv"])] = rng.choice([0, 1, 1000, 2**40, 2**64 - 1])
    data = bytearray(gguf_bytes(kvs, tensors, **forge))
    header = min(len(data), 2000)
    if "flip" in what:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(header)] ^= 1 << rng.randrange(8)
    if "u64" in what:
        _u64_at(data, rng.randrange(header), rng.choice([2**32, 2**63, 10**7, 2**64 - 1, rng.getrandbits(64)]))
    if "truncate" in what:
        data = data[:rng.randrange(len(data))]
    path.write_bytes(bytes(data))
    return "+".join(what)


def hf_case(rng: random.Random, base: Path, path: Path) -> str:
    shutil.copytree(base, path)
    what = []
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["field", "field", "drop", "config_text", "st_header", "st_flip", "tok_cfg", "tok", "index", "delete"])
        what.append(op)
        cfg_path = path / "config.json"
        if op in ("field", "drop") and cfg_path.exists():
            try:
                doc = json.loads(cfg_path.read_text())
            except (ValueError, RecursionError):
                continue
            if isinstance(doc, dict):
                key = rng.choice(CONFIG_KEYS)
                if op == "drop":
                    doc.pop(key, None)
                else:
                    doc[key] = rng.choice(JSON_VALUES)
                cfg_path.write_text(json.dumps(doc))
        elif op == "config_text" and cfg_path.exists():
            t = cfg_path.read_text()
            cfg_path.write_text(rng.choice([t[:rng.randrange(len(t) + 1)], "[" * rng.randint(1, 3000), "null", "1e400",
                                            t.replace("32", rng.choice(["-32", "3.2e1", "1e400", "\"32\""]))]))
        elif op == "st_header":
            _edit_st_header(rng, path / "model.safetensors")
        elif op == "st_flip" and (path / "model.safetensors").exists():
            b = bytearray((path / "model.safetensors").read_bytes())
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(min(len(b), 8 + 4000))] ^= 1 << rng.randrange(8)
            (path / "model.safetensors").write_bytes(bytes(b))
        elif op == "tok_cfg":
            (path / "tokenizer_config.json").write_text(json.dumps(rng.choice(
                [[], None, {"chat_template": rng.choice(JSON_VALUES)}, {"add_bos_token": rng.choice(JSON_VALUES)}])))
        elif op == "tok" and (path / "tokenizer.json").exists():
            t = (path / "tokenizer.json").read_text()
            (path / "tokenizer.json").write_text(t[:rng.randrange(len(t) + 1)])
        elif op == "index":
            (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": rng.choice(
                [[], {"a": "model.safetensors"}, {"a": "../x.safetensors"}, {"a": 5}, "x", {"a": "nope.safetensors"}])}))
        elif op == "delete":
            victim = path / rng.choice(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
            victim.unlink(missing_ok=True)
    return "+".join(what)


def _edit_st_header(rng: random.Random, f: Path) -> None:
    if not f.exists():
        return
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError:
        return
    names = [k for k in header if k != "__metadata__"]
    if not names:
        return
    info = header[rng.choice(names)]
    key = rng.choice(["dtype", "shape", "data_offsets"])
    info[key] = rng.choice({"dtype": ["I64", "F64", "U8", "BOOL", "F8_E4M3", 5],
                            "shape": [[0, 32], [32], [-1, 32], [2**40, 2], [1, 1, 1, 1, 1], "x"],
                            "data_offsets": [[0, 0], [0, 2**40], [100, 50], [0], "x"]}[key])
    body = json.dumps(header).encode()
    f.write_bytes(len(body).to_bytes(8, "little") + body + raw[8 + n:])


PASS_NAMES = ["quant", "gptq", "codebook", "nm", "lowrank", "entropy", "cast", "allocate", "calibrate", "nope", 5]
PARAM_NAMES = ["bits", "group", "sym", "match", "names", "skip", "codec", "n", "m", "rank", "d", "budget", "dtype", "zzz"]
PARAM_VALUES: list[Any] = [None, True, 0, 1, 2, 3, 4, 8, 9, 64, 128, -1, 10**40, 0.5, math.inf, math.nan, "x", "linear",
                           "embed|lm_head", "(.+)+X", "(", "[a-z]+", "", [4], {"a": 1}, "zstd", "f16", "1e400"]
TRAIN_KEYS = ["model", "data", "steps", "batch", "seq_len", "lr", "warmup", "holdout", "ckpt_every", "qat", "export_bits",
              "seed", "nope"]
QAT_KEYS = ["bits", "group", "sym", "zero", "nm", "codebook", "lowrank", "kv_bits", "rate_lambda", "nope"]


def recipe_case(rng: random.Random, path: Path) -> str:
    if rng.random() < 0.5:
        steps: Any = [rng.choice(PASS_NAMES) if rng.random() < 0.3 else
                      {rng.choice(PASS_NAMES): {rng.choice(PARAM_NAMES): rng.choice(PARAM_VALUES) for _ in range(rng.randint(0, 3))}
                       if rng.random() < 0.9 else rng.choice(PARAM_VALUES)} for _ in range(rng.randint(0, 4))]
        doc: Any = {"pipeline": steps if rng.random() < 0.85 else rng.choice(PARAM_VALUES)}
        kind = "pipeline"
    else:
        doc = {rng.choice(TRAIN_KEYS): rng.choice(PARAM_VALUES) for _ in range(rng.randint(0, 4))}
        if rng.random() < 0.5:
            doc["qat"] = {rng.choice(QAT_KEYS): rng.choice(PARAM_VALUES) for _ in range(rng.randint(0, 3))}
        kind = "train"
    text = yaml.safe_dump(doc, allow_unicode=True) if rng.random() < 0.8 else json.dumps(doc, default=str)
    if rng.random() < 0.2:
        i = rng.randrange(len(text) + 1)
        text = text[:i] + rng.choice(["&a ", "*a", "[", "{", ": ", "\t", "!!python/object:os.system ", "\x00", "- "]) + text[i:]
    path.write_text(text)
    return kind


def run(seed: int, n: int, work: Path) -> dict[str, Any]:
    from cllm_compiler.errors import CllmError
    from cllm_compiler.ir import TensorNode
    from cllm_compiler.loading import load_model
    from cllm_compiler.pipeline import load_recipe
    from cllm_compiler.reprs import Dense
    from cllm_compiler.training.recipe import load_recipe as load_train_recipe
    base = micro_hf(work / "base")
    resource.setrlimit(resource.RLIMIT_AS, ((status_kib("VmSize") << 10) + (2 << 30), resource.RLIM_INFINITY))  # a bomb fails here, fast
    probe_node = TensorNode("model.layers.0.self_attn.q_proj.weight", (4, 4), Dense((4, 4), "f32", data=__import__("torch").zeros(4, 4)))

    def load_all(p: Path) -> None:
        m = load_model(p)
        for node in m:
            node.rep.decode()
        if m.tokenizer is not None:
            m.tokenizer.load()

    def recipe(p: Path, kind: str) -> None:
        if kind == "train":
            load_train_recipe(p)
        else:
            for ps in load_recipe(p):
                ps.matches(probe_node)

    families: dict[str, tuple[Callable[[random.Random, Path], str], Callable[[Path, str], None], str]] = {
        "gguf": (gguf_case, lambda p, w: load_all(p), "m.gguf"),
        "hf": (lambda r, p: hf_case(r, base, p), lambda p, w: load_all(p), "model"),
        "recipe": (recipe_case, recipe, "r.yaml"),
    }
    signal.signal(signal.SIGALRM, _alarm)
    summary: dict[str, Any] = {}
    for fam, (make, use, fname) in families.items():
        rng = random.Random(f"{seed}/{fam}")
        stats = {"cases": 0, "refused": 0, "loaded": 0, "slowest_s": 0.0, "failures": []}
        for i in range(n):
            d = work / fam / str(i)
            d.mkdir(parents=True)
            what = make(rng, d / fname)
            t0 = time.perf_counter()
            signal.alarm(LIMIT_S)
            try:
                use(d / fname, what)
                stats["loaded"] += 1
            except CllmError:
                stats["refused"] += 1
            except Hang:
                stats["failures"].append({"case": i, "what": what, "error": f"over {LIMIT_S} s"})
            except BaseException as e:  # noqa: BLE001 - any other exception is the defect being looked for
                stats["failures"].append({"case": i, "what": what, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            finally:
                signal.alarm(0)
            stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - t0)
            stats["cases"] += 1
            shutil.rmtree(d, ignore_errors=True)
        summary[fam] = stats
    return summary


if __name__ == "__main__":
    seed, n, out, work = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    out.write_text(json.dumps(run(seed, n, work), indent=1))
