import json

import pytest
import torch

from cllm_compiler.cli.inspect import main as inspect_main
from cllm_compiler.compiler import compile_model
from cllm_compiler.container import ContainerFile, read_container, write_container
from cllm_compiler.errors import ContainerError
from cllm_compiler.loading import load_model
from cllm_compiler.passmanager import PassManager
from cllm_compiler.pipeline import parse_pipeline
from cllm_compiler.targets import get_target
from tests.conftest import host_target_name

PIPE = "quant{bits=3,group=64},quant{bits=5,group=0,match=embed},cast{dtype=bf16,match=norm},entropy{codec=zstd}"


def _compiled(tiny_dir, pipe=PIPE):
    m = load_model(tiny_dir)
    PassManager(parse_pipeline(pipe)).run(m)
    return m


def test_every_tensor_decodes_bit_exactly(tiny_dir, tmp_path):
    m = _compiled(tiny_dir)
    size = write_container(m, tmp_path / "m.cllm")
    assert size == (tmp_path / "m.cllm").stat().st_size
    back = read_container(tmp_path / "m.cllm")
    assert list(back.tensors) == list(m.tensors)
    assert back.config == m.config and back.tokenizer.tokenizer_json == m.tokenizer.tokenizer_json
    for node in m:
        a, b = node.rep.decode(), back.tensors[node.name].rep.decode()
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b), node.name
        assert back.tensors[node.name].rep.storage_bits() == node.rep.storage_bits()


def test_compressed_ir_holds_no_dense_copy(tiny_dir):
    m = _compiled(tiny_dir, "quant{bits=4,group=64},entropy{codec=zstd}")
    q = m.tensors["model.layers.0.mlp.up_proj.weight"].rep
    assert q.kind == "encoded" and q.inner_kind == "quant"
    assert not any(isinstance(v, torch.Tensor) for v in vars(q).values())
    assert q.storage_bits() < 4.5 * 256 * 512


def test_flipped_payload_byte_names_the_tensor(tiny_artifact, tmp_path, capsys):
    f = tmp_path / "art"
    import shutil
    shutil.copytree(tiny_artifact, f)
    cf = ContainerFile(f / "model.cllm")
    rec = next(r for r in cf.header["tensors"] if r["name"] == "model.layers.1.mlp.down_proj.weight")
    off = cf.payload_start + rec["buffers"][0]["offset"] + 10
    data = bytearray((f / "model.cllm").read_bytes())
    data[off] ^= 0x01
    (f / "model.cllm").write_bytes(bytes(data))
    with pytest.raises(ContainerError) as e:
        read_container(f / "model.cllm")
    assert "model.layers.1.mlp.down_proj.weight" in e.value.format() and "sha256" in e.value.format()
    assert inspect_main([str(f)]) == 2
    err = capsys.readouterr().err
    assert "model.layers.1.mlp.down_proj.weight" in err and "sha256 mismatch" in err


@pytest.mark.parametrize("damage", ["truncate", "header", "magic", "empty"])
def test_damaged_files_raise_container_errors(tiny_artifact, tmp_path, damage):
    data = bytearray((tiny_artifact / "model.cllm").read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "header":
        data[-100] ^= 0xFF
    elif damage == "magic":
        data[0:4] = b"GGUF"
    else:
        data = bytearray()
    p = tmp_path / "x.cllm"
    p.write_bytes(bytes(data))
    with pytest.raises(ContainerError):
        read_container(p)


def test_inspect_bpw_is_file_bytes_over_params(tiny_artifact, capsys):
    assert inspect_main([str(tiny_artifact), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    size = (tiny_artifact / "model.cllm").stat().st_size
    params = load_model(tiny_artifact).num_params
    assert doc["summary"]["file_bytes"] == size and doc["summary"]["params"] == params
    assert doc["summary"]["bits_per_weight"] == pytest.approx(size * 8 / params, rel=1e-12)
    assert inspect_main([str(tiny_artifact)]) == 0
    text = capsys.readouterr().out
    assert f"{size * 8 / params:.4f} bits/weight" in text and "all sha256 verified" in text
    report = json.loads((tiny_artifact / "report.json").read_text())
    assert report["bits_per_weight"] == pytest.approx(size * 8 / params)


def test_artifacts_are_deterministic(tiny_dir, tmp_path):
    pipe = parse_pipeline(PIPE)
    for name in ("a", "b"):
        compile_model(tiny_dir, get_target("host"), parse_pipeline(PIPE), tmp_path / name)
    for f in ("model.cllm", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["pipeline"] == ",".join(p.spec() for p in pipe) and man["source"]["sha256"]
    assert man["tools"]["torch"] and man["target"] == host_target_name()


def test_streaming_and_whole_model_compiles_write_the_same_bytes(tiny_dir, tmp_path):
    from cllm_compiler.passmanager import IRDumpInstrument
    a = compile_model(tiny_dir, get_target("host"), parse_pipeline(PIPE), tmp_path / "a")
    b = compile_model(tiny_dir, get_target("host"), parse_pipeline(PIPE), tmp_path / "b",
                      dump_ir=tmp_path / "ir")  # an IR dump needs whole-model passes
    assert a.report["streamed"] and not b.report["streamed"]
    assert (tmp_path / "a" / "model.cllm").read_bytes() == (tmp_path / "b" / "model.cllm").read_bytes()
    assert [t["sqnr_db"] for t in a.report["tensors"]] == [t["sqnr_db"] for t in b.report["tensors"]]
    assert IRDumpInstrument
