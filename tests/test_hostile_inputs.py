"""Issue 22's probes, re-run against the CLIs: every hostile input ends in exit 2 and one
`error:` line (or a correct run where the input is valid), no traceback, <= 5 s and <= 512 MiB
each, nothing left behind and the user's files untouched.

All probes run in one warmed-up process that forks per probe (tests/hostile.py), so the whole
module takes seconds, not a Python start-up per case.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.hostile import ARR, F32, STR, U32, gguf_bytes, kv, micro_gguf_parts, micro_hf

FAST = ["--no-lower", "--eval-windows", "0", "-p", "quant{bits=4,group=32},entropy{codec=zstd}"]
PROBES: dict[str, Callable[[Path, Path], tuple[str, list[str], int]]] = {}


def probe(fn: Callable[[Path, Path], tuple[str, list[str], int]]) -> Callable:
    PROBES[fn.__name__] = fn
    return fn


def compile_(model: Path, d: Path, *extra: str) -> tuple[str, list[str], int]:
    return "compile", [str(model), *FAST, "-o", str(d / "out"), *extra], 2


def gguf_case(d: Path, edit: Callable[[list[bytes], list], Any] | None = None, cfg: dict | None = None,
              nan: bool = False, **forge: Any) -> tuple[str, list[str], int]:
    kvs, tensors = micro_gguf_parts(cfg, nan=nan)
    if edit is not None:
        edit(kvs, tensors)
    (d / "m.gguf").write_bytes(gguf_bytes(kvs, tensors, **forge))
    return compile_(d / "m.gguf", d)


def hf_case(d: Path, micro: Path, cfg: dict | None = None, edit: Callable[[Path], Any] | None = None,
            cli: str = "compile") -> tuple[str, list[str], int]:
    import shutil
    m = d / "model"
    shutil.copytree(micro, m)
    if cfg is not None:
        doc = json.loads((m / "config.json").read_text())
        (m / "config.json").write_text(json.dumps({**doc, **cfg}))
    if edit is not None:
        edit(m)
    if cli == "eval":
        return "eval", [str(m), "--max-windows", "1", "--seqlen", "64", "--no-report"], 2
    return compile_(m, d)


def _swap_tensor(m: Path, name: str, value: Any) -> None:
    from safetensors.torch import load_file, save_file
    sd = load_file(m / "model.safetensors")
    if value is None:
        del sd[name]
    else:
        sd[name] = value
    save_file(sd, m / "model.safetensors", metadata={"format": "pt"})


# --- GGUF --------------------------------------------------------------------------------------
@probe
def gguf_array_claims_1e7(d, micro):
    (d / "m.gguf").write_bytes(gguf_bytes([kv("general.architecture", STR, "llama"),
                                           kv("tokenizer.ggml.tokens", ARR, (STR, b"", 10**7))], []))
    return compile_(d / "m.gguf", d)


@probe
def gguf_array_claims_1e6(d, micro):
    return gguf_case(d, lambda kvs, t: kvs.append(kv("tokenizer.ggml.scores", ARR, (F32, b"\0" * 64, 10**6))))


def _set_u32(key: str, value: int) -> Callable:
    def edit(kvs: list[bytes], tensors: list) -> None:
        kvs[:] = [kv(key, U32, value) if r.startswith(struct.pack("<Q", len(key)) + key.encode()) else r for r in kvs]
    return edit


for _key, _val in [("head_count", 0), ("head_count", 3), ("block_count", 0), ("block_count", 10**9),
                   ("head_count_kv", 0), ("vocab_size", 100), ("embedding_length", 0)]:
    _full = f"llama.{'attention.' if _key.startswith('head') else ''}{_key}"
    PROBES[f"gguf_{_key}_{_val}"] = (lambda k, v: lambda d, micro: gguf_case(d, _set_u32(k, v)))(_full, _val)


@probe
def gguf_zero_dim_tensor(d, micro):
    return gguf_case(d, lambda kvs, t: t.__setitem__(0, (t[0][0], [32, 0], b"")))


@probe
def gguf_huge_dims(d, micro):
    return gguf_case(d, lambda kvs, t: t.__setitem__(0, (t[0][0], [2**31, 2**31], t[0][2])))


@probe
def gguf_overlapping_offsets(d, micro):
    kvs, tensors = micro_gguf_parts()
    (d / "m.gguf").write_bytes(gguf_bytes(kvs, tensors, offsets=[0] * len(tensors)))
    return compile_(d / "m.gguf", d)


@probe
def gguf_nan_weights(d, micro):
    return gguf_case(d, nan=True)


@probe
def gguf_nan_rope_base(d, micro):
    return gguf_case(d, cfg={"rope_theta": float("nan")})


@probe
def gguf_missing_tensor(d, micro):
    return gguf_case(d, lambda kvs, t: t.pop())


@probe
def gguf_extra_tensor(d, micro):
    return gguf_case(d, lambda kvs, t: t.append(("blk.5.attn_norm.weight", [32], b"\0" * 128)))


@probe
def gguf_truncated_header(d, micro):
    kvs, tensors = micro_gguf_parts()
    (d / "m.gguf").write_bytes(gguf_bytes(kvs, tensors)[:300])
    return compile_(d / "m.gguf", d)


@probe
def gguf_bad_alignment(d, micro):
    return gguf_case(d, lambda kvs, t: kvs.append(kv("general.alignment", U32, 3)))


# --- Hugging Face folders ------------------------------------------------------------------------
def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda m: (m / name).write_text(text)


HF_CONFIG = {"config_list": "[]", "config_null": "null", "config_deep": "[" * 100_000 + "]" * 100_000,
             "config_garbage": "{\"architectures\": [\"LlamaForCausalLM\"], ", "config_string": "\"llama\""}
for _n, _t in HF_CONFIG.items():
    PROBES[f"hf_{_n}"] = (lambda t: lambda d, micro: hf_case(d, micro, edit=_write("config.json", t)))(_t)

HF_FIELDS = {"negative_hidden": {"hidden_size": -32}, "kv_heads_0": {"num_key_value_heads": 0},
             "layers_0": {"num_hidden_layers": 0}, "heads_3": {"num_attention_heads": 3},
             "vocab_disagrees": {"vocab_size": 100}, "heads_list": {"num_attention_heads": [2]},
             "hidden_float": {"hidden_size": 32.5}, "hidden_huge": {"hidden_size": 1e400},
             "rope_nan": {"rope_theta": math.nan}, "rope_string": {"rope_theta": "x"},
             "architectures_dict": {"architectures": {"a": 1}}, "eos_out_of_vocab": {"eos_token_id": 10**6},
             "rope_parameters_list": {"rope_parameters": [1]},
             "rope_scaling_llama3": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}}
for _n, _c in HF_FIELDS.items():
    PROBES[f"hf_{_n}"] = (lambda c: lambda d, micro: hf_case(d, micro, cfg=c))(_c)
for _n, _c in {"layers_1e9": {"num_hidden_layers": 10**9}, "vocab_1e9": {"vocab_size": 10**9}}.items():
    PROBES[f"hf_eval_{_n}"] = (lambda c: lambda d, micro: hf_case(d, micro, cfg=c, cli="eval"))(_c)

HF_FILES = {"tokenizer_config_garbage": ("tokenizer_config.json", "{not json"),
            "tokenizer_config_list": ("tokenizer_config.json", "[1, 2]"),
            "tokenizer_config_template_int": ("tokenizer_config.json", "{\"chat_template\": 5}"),
            "tokenizer_garbage": ("tokenizer.json", "{\"model\": 1}"),
            "weight_map_list": ("model.safetensors.index.json", "{\"weight_map\": [\"model.safetensors\"]}"),
            "weight_map_escape": ("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"../x.safetensors\"}}"),
            "compression_garbage": ("compression.json", "{"),
            "compression_wrong": ("compression.json", "{\"format\": \"cllm-compression\", \"version\": 1, \"tensors\": []}")}
for _n, (_f, _t) in HF_FILES.items():
    PROBES[f"hf_{_n}"] = (lambda f, t: lambda d, micro: hf_case(d, micro, edit=_write(f, t)))(_f, _t)


@probe
def hf_zero_by_64_weight(d, micro):
    import torch
    return hf_case(d, micro, edit=lambda m: _swap_tensor(m, "model.layers.0.mlp.up_proj.weight", torch.zeros(0, 32)))


@probe
def hf_nan_weights(d, micro):
    import torch
    w = torch.zeros(64, 32)
    w[3, 3] = float("nan")
    return hf_case(d, micro, edit=lambda m: _swap_tensor(m, "model.layers.0.mlp.up_proj.weight", w))


@probe
def hf_missing_tensor(d, micro):
    return hf_case(d, micro, edit=lambda m: _swap_tensor(m, "model.layers.0.mlp.up_proj.weight", None))


@probe
def hf_extra_tensor(d, micro):
    import torch
    return hf_case(d, micro, edit=lambda m: _swap_tensor(m, "model.layers.7.mlp.up_proj.weight", torch.zeros(64, 32)))


@probe
def hf_int_tensor(d, micro):
    import torch
    return hf_case(d, micro, edit=lambda m: _swap_tensor(m, "model.norm.weight", torch.zeros(32, dtype=torch.int64)))


@probe
def hf_config_is_dev_zero(d, micro):
    return hf_case(d, micro, edit=lambda m: ((m / "config.json").unlink(), (m / "config.json").symlink_to("/dev/zero")))


@probe
def hf_fifo_safetensors(d, micro):
    return hf_case(d, micro, edit=lambda m: ((m / "model.safetensors").unlink(), os.mkfifo(m / "model.safetensors")))


@probe
def hf_fifo_tokenizer(d, micro):
    return hf_case(d, micro, edit=lambda m: ((m / "tokenizer.json").unlink(), os.mkfifo(m / "tokenizer.json")))


@probe
def hf_tokenizer_links_out(d, micro):
    (d / "secret.txt").write_text(Path(micro, "tokenizer.json").read_text())  # a valid tokenizer, outside
    return hf_case(d, micro, edit=lambda m: ((m / "tokenizer.json").unlink(), (m / "tokenizer.json").symlink_to(d / "secret.txt")))


# --- pipelines and recipes -----------------------------------------------------------------------
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "pipeline: *i\n"


@probe
def recipe_alias_bomb(d, micro):
    (d / "r.yaml").write_text(BOMB)
    return "compile", [str(micro), "--recipe", str(d / "r.yaml"), "--no-lower", "-o", str(d / "out")], 2


for _n, _text in {"recipe_list_param": "pipeline:\n  - quant: {bits: [4]}\n",
                  "recipe_pipeline_int": "pipeline: 5\n", "recipe_params_list": "pipeline:\n  - quant: [1, 2]\n",
                  "recipe_not_yaml": "pipeline: [\n", "recipe_deep": "pipeline: " + "[" * 5000 + "]" * 5000 + "\n"}.items():
    PROBES[_n] = (lambda text: lambda d, micro: ((d / "r.yaml").write_text(text), (
        "compile", [str(micro), "--recipe", str(d / "r.yaml"), "--no-lower", "-o", str(d / "out")], 2))[1])(_text)

for _n, _p in {"pipeline_redos_times_out": "quant{bits=4,skip=(.|[a-z])+\\s}",
               "pipeline_group_inf": "quant{bits=4,group=.inf}",
               "pipeline_bits_1e400": "quant{bits=1e400}", "pipeline_bad_regex": "quant{names=(}",
               "pipeline_bits_nan": "quant{bits=nan}"}.items():
    PROBES[_n] = (lambda p: lambda d, micro: ("compile", [str(micro), "--no-lower", "--eval-windows", "0", "-p", p,
                                                          "-o", str(d / "out")], 2))(_p)


def train_case(d: Path, micro: Path, recipe: str, resume: bytes | None = None, digest: bool | bytes = True):
    (d / "data.txt").write_text(("the a of and to in is . " * 40 + "\n") * 20)
    (d / "r.yaml").write_text(f"model: {micro}\ndata: [{d / 'data.txt'}]\nsteps: 2\nbatch: 1\nseq_len: 8\n" + recipe)
    argv = [str(d / "r.yaml"), "-o", str(d / "run")]
    if resume is not None:
        (d / "run").mkdir()
        (d / "run" / "checkpoint.pt").write_bytes(resume)
        if digest:
            hashed = digest if isinstance(digest, bytes) else resume  # bytes: the hash of what was written
            (d / "run" / "checkpoint.sha256").write_text(hashlib.sha256(hashed).hexdigest() + "\n")
        argv.append("--resume")
    return "train", argv, 2


def _ckpt_bytes() -> bytes:
    import io

    import torch
    buf = io.BytesIO()
    torch.save({"step": 1, "model": {"w": torch.zeros(4)}, "recipe": "x"}, buf)
    return buf.getvalue()


for _n, _r in {"train_steps_string": "lr: x\n", "train_bits_dict": "qat: {bits: {a: 1}}\n",
               "train_qat_list": "qat: [1]\n", "train_lr_inf": "lr: .inf\n", "train_alias": "steps: &s 3\nwarmup: *s\n",
               "train_unknown_codebook_key": "qat: {codebook: {bits: 4, evil: 1}}\n"}.items():
    PROBES[_n] = (lambda r: lambda d, micro: train_case(d, micro, r))(_r)
PROBES["train_resume_truncated"] = lambda d, micro: train_case(d, micro, "", _ckpt_bytes()[:100])
PROBES["train_resume_empty"] = lambda d, micro: train_case(d, micro, "", b"")
PROBES["train_resume_random"] = lambda d, micro: train_case(d, micro, "", os.urandom(4096))
PROBES["train_resume_other_model"] = lambda d, micro: train_case(d, micro, "", _ckpt_bytes())
PROBES["train_resume_bit_flip"] = lambda d, micro: train_case(
    d, micro, "", bytes([_ckpt_bytes()[0] ^ 1]) + _ckpt_bytes()[1:], digest=_ckpt_bytes())
PROBES["train_resume_no_hash"] = lambda d, micro: train_case(d, micro, "", _ckpt_bytes(), digest=False)


# --- evaluation, artifacts and outputs -----------------------------------------------------------
@probe
def eval_seqlen_0(d, micro):
    return "eval", [str(micro), "--seqlen", "0", "--no-report"], 2


@probe
def eval_garbage_manifest(d, micro):
    from cllm_compiler.container import write_container
    from cllm_compiler.loading import load_model
    (d / "art").mkdir()
    write_container(load_model(micro), d / "art" / "model.cllm")
    (d / "art" / "manifest.json").write_text("\x00garbage{")
    return "eval", [str(d / "art"), "--max-windows", "1", "--seqlen", "64", "--no-report"], 2


@probe
def force_onto_source_model(d, micro):
    import shutil
    shutil.copytree(micro, d / "model")
    return "compile", [str(d / "model"), *FAST, "-o", str(d / "model"), "--force"], 2


@probe
def force_onto_user_folder(d, micro):
    (d / "mine").mkdir()
    (d / "mine" / "thesis.txt").write_text("years of work")
    return "compile", [str(micro), *FAST, "-o", str(d / "mine"), "--force"], 2


@probe
def markup_in_output_path(d, micro):
    return "compile", [str(d / "missing[/x]\x1b[31m"), *FAST, "-o", str(d / "o[/bold]")], 2


PAYLOAD = "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}{{ messages[0]['content'] }}"


@probe
def chat_template_payload_compiles(d, micro):
    """A template is data: compiling it is fine (the next probe runs it)."""
    return hf_case(d, micro, edit=_write("tokenizer_config.json", json.dumps({"chat_template": PAYLOAD})))[:2] + (0,)


@probe
def chat_template_payload_never_runs(d, micro):
    art = d.parent / "chat_template_payload_compiles" / "out"
    return "run", [str(art), "--chat", "hi", "-n", "2"], 2  # refused, and no PWNED file appears here


@probe
def chat_template_bomb(d, micro):
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    hf_case(d, micro, edit=_write("tokenizer_config.json", json.dumps({"chat_template": template})))
    return "compile", [str(d / "model"), *FAST, "-o", str(d / "art")], 0


@probe
def chat_template_bomb_is_stopped(d, micro):
    return "run", [str(d.parent / "chat_template_bomb" / "art"), "--chat", "hi", "-n", "2"], 2


@probe
def bpe_without_merges_to_gguf(d, micro):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())[:64]
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf_case(d, micro, edit=_write("tokenizer.json", tok.to_str()))
    return "compile", [str(d / "model"), "--eval-windows", "0", "-p", "quant{bits=4,group=32}", "-t", "gguf-cpu",
                       "-o", str(d / "out")], 2


def _damaged(d: Path, micro: Path, name: str, text: str) -> Path:
    from cllm_compiler.container import write_container
    from cllm_compiler.loading import load_model
    (d / "art").mkdir()
    write_container(load_model(micro), d / "art" / "model.cllm")
    (d / "art" / "report.json").write_text("{}")
    (d / "art" / name).parent.mkdir(parents=True, exist_ok=True)
    (d / "art" / name).write_text(text)
    return d / "art"


for _n, (_cli, _file, _argv) in {"run_garbage_tvm_json": ("run", "tvm/tvm.json", ["--prompt", "hi", "-n", "2"]),
                                 "run_tvm_json_list": ("run", "tvm/tvm.json", ["--prompt", "hi", "-n", "2"]),
                                 "validate_garbage_report": ("validate", "report.json", [])}.items():
    PROBES[_n] = (lambda cli, f, argv, text: lambda d, micro: (cli, [str(_damaged(d, micro, f, text)), *argv], 2))(
        _cli, _file, _argv, "[1, 2]" if "list" in _n else "{\"broken\": ")
# inspect reads model.cllm alone (its own checksums): a damaged manifest beside it does not matter
PROBES["inspect_ignores_garbage_manifest"] = lambda d, micro: (
    "inspect", [str(_damaged(d, micro, "manifest.json", "{\"broken\": "))], 0)


# --- valid inputs run correctly (the harness can tell success from refusal) ----------------------
@probe
def group_wider_than_tensor(d, micro):
    """The writer once wrote group=128 on 32-column tensors and its own reader refused the file."""
    return "compile", [str(micro), *FAST[:-1], "quant{bits=4,group=128},entropy{codec=zstd}", "-o", str(d / "out")], 0


@probe
def group_wider_reads_back(d, micro):
    return "inspect", [str(d.parent / "group_wider_than_tensor" / "out")], 0


@probe
def pipeline_redos_issue_pattern(d, micro):
    """The issue's `(.+)+X` is valid; the `regex` engine matches it in microseconds: a correct run."""
    return "compile", [str(micro), *FAST[:-1], "quant{bits=4,group=32,skip=(.+)+X}", "-o", str(d / "out")], 0


@probe
def valid_hf_compiles(d, micro):
    return "compile", [str(micro), *FAST, "-o", str(d / "out")], 0


@probe
def valid_gguf_compiles(d, micro):
    kvs, tensors = micro_gguf_parts()
    (d / "m.gguf").write_bytes(gguf_bytes(kvs, tensors))
    return "compile", [str(d / "m.gguf"), *FAST, "-o", str(d / "out")], 0


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile")
    micro = micro_hf(root / "micro")
    cases, before = [], {}
    for name, fn in PROBES.items():
        d = root / name
        d.mkdir()
        cli, argv, want = fn(d, micro)
        cases.append({"id": name, "cli": cli, "argv": argv, "want": want, "cwd": str(d)})
        before[name] = _snapshot(d)
    micro_before = _snapshot(micro)
    (root / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "CLLM_PROGRESS": "0"}
    subprocess.run([sys.executable, "-m", "tests.hostile", str(root / "cases.json"), str(root / "results.json"),
                    str(root / "_runs")], check=True, env=env, cwd=Path(__file__).parent.parent, timeout=600)
    res = {r["id"]: r for r in json.loads((root / "results.json").read_text())}
    for c in cases:
        after = _snapshot(root / c["id"])
        res[c["id"]] |= {"want": c["want"], "cli": c["cli"], "added": sorted(set(after) - set(before[c["id"]])),
                         "changed": sorted(k for k in before[c["id"]] if after.get(k) != before[c["id"]][k])}
    assert _snapshot(micro) == micro_before, "a probe changed the shared model folder"
    return res


@pytest.mark.parametrize("name", list(PROBES))
def test_probe(results, name):
    r = results[name]
    err_lines = [ln for ln in r["stderr"].splitlines() if ln.startswith("error:")]
    detail = f"rc={r['rc']} in {r['seconds']:.1f}s\n{r['stderr'][-1500:]}"
    assert "Traceback" not in r["stderr"], detail
    assert r["rc"] == r["want"], detail
    assert r["seconds"] <= 5.0, detail
    assert r["rss_growth_mib"] <= 512, detail
    assert not r["changed"], f"user files changed: {r['changed']}"
    if r["want"] == 2:
        assert len(err_lines) == 1 and len(err_lines[0]) > 20, detail
        assert "internal error" not in err_lines[0], detail
        assert not r["added"], f"left behind: {r['added']}"
        assert "\x1b" not in r["stderr"], "a control character reached the terminal"
    else:
        assert not err_lines, detail
        assert r["cli"] != "compile" or any(a in ("out", "art") for a in r["added"]), detail
    assert "PWNED" not in r["added"], "the chat template ran code"
