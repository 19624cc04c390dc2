"""Build cllm_compiler/data/calib/mix.txt, the packaged calibration mix (issue 19, item 5).

From the shared training text (State of the Union, Shakespeare, Moby-Dick: the first 95% of
each file; the last 5% stays held out), take `--chunks` evenly spaced passages of about
`--chars` characters across the three files joined, each cut at sentence or line ends, so every source
appears in proportion to its size as with `calibrate{data=../shared/data/train}`. The result is
a ~0.8 MB file that ships with cllm, so compiles calibrate on it without ../shared.

  python scripts/make_calib_mix.py            # rewrites the file; same inputs -> same bytes
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("sotu-1790-2018.txt", "shakespeare-complete.txt", "moby-dick.txt")


def first_95(text: str) -> str:
    return text[:text.rfind("\n", 0, int(len(text) * 0.95))]


def passages(text: str, chunks: int, chars: int) -> list[str]:
    out = []
    span = len(text) - 2 * chars
    for i in range(chunks):
        a = sentence_end(text, i * span // max(chunks - 1, 1))
        out.append(text[a:sentence_end(text, a + chars)].strip())
    return out


def sentence_end(text: str, at: int) -> int:
    """Just past the first line end or sentence end ('. ') at or after `at`."""
    ends = [i for i in (text.find("\n", at), text.find(". ", at)) if i >= 0]
    return min(ends) + 1 if ends else len(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=ROOT.parent / "shared/data/train")
    ap.add_argument("--chunks", type=int, default=256)
    ap.add_argument("--chars", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=ROOT / "cllm_compiler/data/calib/mix.txt")
    args = ap.parse_args()
    text = "\n\n".join(first_95((args.train / s).read_text(encoding="utf-8")) for s in SOURCES)
    mix = "\n\n".join(passages(text, args.chunks, args.chars)) + "\n"
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(mix, encoding="utf-8")
    tmp.replace(args.out)
    print(f"{args.out}: {len(mix.encode())} bytes, sha256 {hashlib.sha256(mix.encode()).hexdigest()}")


if __name__ == "__main__":
    main()
