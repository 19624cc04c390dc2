"""End-to-end CLI runs on a tiny model, and every listed bad input."""
import json
from pathlib import Path
import os
import subprocess
import sys

import pytest

from cllm_compiler.cli.compile import main as compile_main
from cllm_compiler.cli.eval import main as eval_main


def _no_artifact(parent, name):
    """Nothing at `name`, and no hidden partial folders left beside it."""
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_compile_end_to_end_prints_summary(tiny_dir, tmp_path, capsys):
    out = tmp_path / "art"
    rc = compile_main([str(tiny_dir), "-t", "jetson-orin-nano-8gb", "-o", str(out), "--eval-windows", "1",
                       "--seqlen", "256", "--dump-ir", str(tmp_path / "ir")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "bits/weight" in text and "PPL wikitext-2" in text and "KLD" in text
    rep = json.loads((out / "report.json").read_text())
    assert rep["target"] == "jetson-orin-nano-8gb" and rep["eval"]["compressed"]["windows"] == 1
    assert rep["eval"]["compressed"]["kld_mean"] > 0 and rep["eval"]["reference"]["kld_mean"] == 0
    assert all(t["sqnr_db"] > 5 for t in rep["tensors"] if t["mse"])
    assert len(rep["timing"]["passes"]) == 4 and "estimated" in rep["estimates"]["label"]  # the plan: calibrate,gptq,quant,entropy
    assert rep["plan"]["pipeline"].startswith("calibrate,gptq{bits=4,group=64}")
    assert sorted(p.name for p in (tmp_path / "ir").iterdir())[0].startswith("01-calibrate")
    # An existing artifact is not overwritten without --force.
    assert compile_main([str(tiny_dir), "-o", str(out), "--eval-windows", "0"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert compile_main([str(tiny_dir), "-o", str(out), "--eval-windows", "0", "--force"]) == 0


def test_eval_cli_matches_manual_ppl(tiny_dir, tiny_artifact, tmp_path, capsys):
    import math

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from cllm_compiler.evaluate import tokenize, wikitext_text
    from cllm_compiler.loading import load_model
    rc = eval_main([str(tiny_artifact), "--reference", str(tiny_dir), "--seqlen", "128", "--max-windows", "2",
                    "--json", str(tmp_path / "r.json")])
    assert rc == 0
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    ids = tokenize(load_model(tiny_dir).tokenizer, wikitext_text())
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        x = ids[:256].view(2, 128)
        logits = hf(x).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    assert res["reference"]["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-4)
    assert res["reference"]["tokens_total"] == ids.numel() and res["reference"]["kld_mean"] == 0
    art = res[str(tiny_artifact)]
    assert art["kld_mean"] > 0 and 0 < art["top1_agree"] <= 1
    assert json.loads((tiny_artifact / "report.json").read_text())["eval_runs"]


@pytest.mark.parametrize("case", ["missing", "corrupt-safetensors", "corrupt-gguf", "target", "pipeline",
                                  "recipe", "unsupported", "threads-0", "threads-negative", "threads-env",
                                  "host-unreadable", "host-no-flags"])
def test_bad_inputs_give_one_clear_error_and_no_artifact(case, tiny_dir, tmp_path, capsys, monkeypatch):
    import shutil
    model, extra = str(tiny_dir), []
    if case == "missing":
        model = str(tmp_path / "no-such-model")
    elif case == "corrupt-safetensors":
        d = tmp_path / "m"
        shutil.copytree(tiny_dir, d)
        (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        model = str(d)
    elif case == "corrupt-gguf":
        (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(64))
        model = str(tmp_path / "m.gguf")
    elif case == "target":
        extra = ["-t", "pdp-11"]
    elif case == "pipeline":
        extra = ["-p", "quant{bits=4,,"]
    elif case == "recipe":
        (tmp_path / "r.yaml").write_text("pipeline: [ {quant: {bits: 4}\n")
        extra = ["--recipe", str(tmp_path / "r.yaml")]
    elif case.startswith("threads"):
        extra = {"threads-0": ["--threads", "0"], "threads-negative": ["--threads", "-2"]}.get(case, [])
        monkeypatch.setenv("CLLM_THREADS", "two")  # only read when --threads is absent
    elif case.startswith("host"):
        from cllm_compiler.targets import host
        info = tmp_path / "cpuinfo"
        if case == "host-no-flags":
            info.write_text("processor : 0\nmodel name : X\n")
        monkeypatch.setattr(host, "CPUINFO", info)
        extra = ["-t", "host"]
    elif case == "unsupported":
        d = tmp_path / "m"
        shutil.copytree(tiny_dir, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["architectures"] = ["FalconForCausalLM"]
        (d / "config.json").write_text(json.dumps(cfg))
        model = str(d)
    out = tmp_path / "out"
    rc = compile_main([model, "-o", str(out), "--eval-windows", "0", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert lines[-2].startswith("error: ") and lines[-1].startswith("hint: ") and "Traceback" not in err
    assert sum(line.startswith("error: ") for line in lines) == 1
    _no_artifact(tmp_path, "out")


def test_disk_full_leaves_no_artifact(tiny_dir, tmp_path):
    """A real write failure: the child may write at most 200 kB per file (RLIMIT_FSIZE)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from cllm_compiler.cli.compile import main\n"
        f"sys.exit(main([{str(tiny_dir)!r}, '-o', {str(tmp_path / 'out')!r}, '--eval-windows', '0',"
        " '-p', 'cast{dtype=f32}']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 2, r.stderr
    assert "no space left" in r.stderr and "Traceback" not in r.stderr
    _no_artifact(tmp_path, "out")


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        compile_main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "pipeline syntax" in text and "--target" in text and "examples" in text
    assert compile_main(["--list-targets"]) == 0
    assert "jetson-orin-nano-8gb" in capsys.readouterr().out
    assert compile_main(["--list-passes"]) == 0
    assert "entropy" in capsys.readouterr().out


def test_force_replaces_only_cllm_output(tiny_dir, tmp_path, capsys):
    """Issue 22: --force never deletes what cllm did not write (a user's folder, the source model, a
    link), and never a user's folder that happens to be named like cllm's temporary one."""
    import shutil
    args = ["--no-lower", "--eval-windows", "0", "-p", "quant{bits=8},entropy", "--force"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("my notes")
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    link = tmp_path / "link"
    link.symlink_to(mine)
    for out, why in ((mine, "cllm did not write"), (model, "cllm did not write"), (link, "symbolic link")):
        before = sorted((p.name, p.stat().st_size) for p in Path(out).iterdir())
        assert compile_main([str(tiny_dir), "-o", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err and sum(ln.startswith("error:") for ln in err.splitlines()) == 1
        assert sorted((p.name, p.stat().st_size) for p in Path(out).iterdir()) == before
    assert link.is_symlink() and (mine / "keep.txt").read_text() == "my notes"
    # cllm's own output is replaced, and a user's ".art.old" folder beside it survives
    art = tmp_path / "art"
    assert compile_main([str(tiny_dir), "-o", str(art), *args]) == 0
    decoy = tmp_path / ".art.old"
    decoy.mkdir()
    (decoy / "precious.txt").write_text("x")
    assert compile_main([str(tiny_dir), "-o", str(art), *args]) == 0
    assert (decoy / "precious.txt").read_text() == "x" and (art / "model.cllm").is_file()
    # an artifact written before the marker existed is still recognised by its manifest
    (art / ".cllm-output").unlink()
    assert compile_main([str(tiny_dir), "-o", str(art), *args]) == 0
    capsys.readouterr()


def test_chat_template_is_sandboxed(tmp_path):
    """Issue 22: a model's chat template is rendered in jinja2's sandbox: one that reaches Python
    internals is refused with a clear error and runs nothing."""
    from cllm_compiler.cli.run import render_chat
    from cllm_compiler.errors import EvalError
    good = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    assert render_chat(good, "hi") == "<|user|>hi\n<|assistant|>"
    flag = tmp_path / "PWNED"
    for bad in (f"{{{{ cycler.__init__.__globals__.os.system('touch {flag}') }}}}",
                f"{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}", "{% for x in messages %"):
        with pytest.raises(EvalError, match="chat template") as e:
            render_chat(bad, "hi")
        assert "--prompt" in e.value.hint
    assert not flag.exists()


def test_error_printer_escapes_markup_and_control_chars(capsys):
    """Issue 22: paths or names with rich markup or terminal escapes print as text, on one line."""
    from cllm_compiler.cli.ui import run_cli
    from cllm_compiler.errors import CllmError

    def fail() -> int:
        raise CllmError("cannot read /tmp/[/x]y[bold] \x1b[31mred\x1b[0m", hint="see [/] \x07")
    assert run_cli(fail) == 2
    err = capsys.readouterr().err
    assert "/tmp/[/x]y[bold]" in err and "\x1b" not in err and "\\x1b[31mred" in err and "\x07" not in err
    assert err.count("\n") == 2


def test_summary_says_why_an_artifact_is_larger_than_its_source():
    """Issue 19: a compile never writes an artifact larger than its source without saying why."""
    from cllm_compiler.cli.summary import larger_than_source
    t = lambda name, bpw, n: {"name": name, "rep": "f32 + zstd", "bpw": bpw, "bits": bpw * n, "stored_bytes": bpw * n / 8}  # noqa: E731
    rep = {"source_bytes": 1000, "artifact_bytes": 1400, "params": 1600,  # source: 5 bits/weight
           "tensors": [t("lm_head.weight", 30.0, 200), t("model.layers.0.mlp.up_proj.weight", 4.2, 1000), t("norm", 32.0, 4)]}
    msg = larger_than_source(rep)
    assert msg and "larger than its source" in msg and "5.00 bits/weight" in msg
    assert msg.index("lm_head.weight") < msg.index("norm (") and "up_proj" not in msg
    assert larger_than_source({**rep, "artifact_bytes": 900}) is None
    assert larger_than_source({**rep, "source_bytes": None}) is None


def test_peak_rss_is_this_programs_own_not_a_parents(tmp_path):
    """A compile started from a large parent reports its own peak: getrusage's ru_maxrss would
    carry the parent's size across fork + exec (Linux), VmHWM does not."""
    import subprocess
    import sys
    code = ("import subprocess, sys\n"
            "big = bytearray(600 << 20)\n"  # the parent holds 600 MiB, touched
            "for i in range(0, len(big), 4096): big[i] = 1\n"
            "print(subprocess.run([sys.executable, '-c', 'from cllm_compiler.measure import peak_rss_bytes; "
            "import resource; print(peak_rss_bytes() >> 20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)'],"
            " capture_output=True, text=True).stdout)")
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert own < 300, own  # the child itself: an interpreter and one small import
    assert inherited > 600 or sys.platform != "linux"  # what ru_maxrss would have said instead
