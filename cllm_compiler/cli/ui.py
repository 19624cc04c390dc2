"""Console helpers shared by the CLIs: error reporting, progress bars, tables."""
from __future__ import annotations

import errno
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import CllmError

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)


THREADS_HELP = ("threads for the runners that measure and evaluate (TVM's pool, llama.cpp, onnxruntime, "
                "torch); default $CLLM_THREADS, else 1")


def thread_count(threads: int | None) -> int:
    """--threads, else $CLLM_THREADS, else $OMP_NUM_THREADS, else 1; a clear error for anything but
    a positive count (checked before any work)."""
    raw: object = threads if threads is not None else os.environ.get("CLLM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        n = int(str(raw).strip())
    except ValueError:
        n = 0
    if n < 1 or n > 4096:
        raise CllmError(f"thread count {str(raw)[:40]!r} is not a positive whole number",
                        hint="give --threads N (or CLLM_THREADS=N) with N >= 1; one thread is the default")
    return n


def setup_threads(threads: int | None = None) -> int:
    """Apply the thread count to every runner of this process; returns it.
    One thread unless asked: on small shared machines torch's OpenMP spin-wait with 2 threads
    was measured 12-25x slower than 1 (the runtime settings for 2: docs/tvm.md, Threads)."""
    n = thread_count(threads)
    os.environ["CLLM_THREADS"] = str(n)      # read by the TVM, llama.cpp and onnxruntime runners
    import torch
    torch.set_num_threads(n)
    return n


INTERNAL = 3  # a bug in cllm, not bad input (which exits 2)


def run_cli(main: Callable[[], int]) -> int:
    """Run a CLI body; turn cllm errors into one clear line and a non-zero exit."""
    try:
        return main()
    except CllmError as e:
        # One line each, whatever a library put in the message.
        console.print(f"[bold red]error:[/] {plain(' '.join(e.format().split()))}", highlight=False, soft_wrap=True)
        if e.hint:
            hint = "; ".join(line.strip() for line in e.hint.splitlines() if line.strip())
            console.print(f"[yellow]hint:[/] {plain(hint)}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            console.print(f"[bold red]error:[/] no space left on device ({plain(str(e))})")
            return 2
        console.print(f"[bold red]error:[/] {plain(str(e))}")
        return 2
    except (MemoryError, RecursionError) as e:
        console.print(f"[bold red]error:[/] out of {'memory' if isinstance(e, MemoryError) else 'stack'} "
                      "(an input is larger or deeper than cllm can hold)", highlight=False)
        console.print("[yellow]hint:[/] check the input files; this is a cllm bug if they are ordinary", highlight=False)
        return INTERNAL
    except Exception as e:  # noqa: BLE001 - the last resort: a bug, said in one line, not a traceback
        if os.environ.get("CLLM_DEBUG"):
            raise
        where = traceback.extract_tb(e.__traceback__)[-1]
        console.print(f"[bold red]error:[/] internal error {type(e).__name__}: {plain(' '.join(str(e).split())[:200])} "
                      f"(at {plain(Path(where.filename).name)}:{where.lineno})", highlight=False, soft_wrap=True)
        console.print("[yellow]hint:[/] this is a cllm bug; please report it with the command line "
                      "(CLLM_DEBUG=1 shows the traceback)", highlight=False)
        return INTERNAL


def plain(text: str) -> str:
    """Untrusted text (paths, names, messages from model files) made safe to print: rich markup
    escaped (a path with "[/x]" made the error printer itself crash) and control characters shown
    as escapes (an ESC from a file must not reach the terminal)."""
    from rich.markup import escape
    return escape("".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text))


@contextmanager
def progress() -> Iterator[Progress]:
    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 console=console, transient=False, disable=not sys.stderr.isatty() and os.environ.get("CLLM_PROGRESS") != "1")
    with p:
        yield p


def step(msg: str) -> None:
    console.print(f"[cyan]•[/] {msg}", highlight=False, soft_wrap=True)
