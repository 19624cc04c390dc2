"""Never train or calibrate on the evaluation set: WikiText-2 test is refused wherever it sits in
a text, not just at its start (a file that merely *contains* an article of it is refused too).

Word 8-grams of WikiText-2 test are hashed once; a text sharing more than a paragraph's worth
of them (``LIMIT``) is refused, naming how many it shares. Public-domain books share none.
"""
from __future__ import annotations

from functools import lru_cache

from .errors import CllmError

N = 8
LIMIT = 64  # shared 8-grams: a quoted sentence or two passes, a paragraph of an article does not


def _grams(text: str) -> set[int]:
    words = text.lower().split()
    return {hash(tuple(words[i:i + N])) for i in range(len(words) - N + 1)}


@lru_cache(maxsize=1)
def _wikitext() -> frozenset[int]:
    from .evaluate import wikitext_text
    return frozenset(_grams(wikitext_text()))


def shared_with_wikitext(text: str, chunk: int = 1 << 20) -> int:
    """How many distinct word 8-grams `text` shares with WikiText-2 test. Read in chunks of words
    (carrying N - 1 across), so an 18 MB training text never becomes one set of its own 8-grams."""
    wiki, hits, carry, pos = _wikitext(), set(), [], 0
    while pos < len(text):
        end = min(len(text), pos + chunk)
        while end < len(text) and not text[end].isspace():  # do not cut a word in two
            end += 1
        words = carry + text[pos:end].lower().split()
        hits |= {h for i in range(len(words) - N + 1) if (h := hash(tuple(words[i:i + N]))) in wiki}
        carry, pos = words[-(N - 1):], end
    return len(hits)


def refuse_eval_text(text: str, name: str, error: type[CllmError], use: str = "train") -> None:
    shared = shared_with_wikitext(text)
    if shared > LIMIT:
        raise error(f"refusing to {use} on {name}: it shares {shared} word 8-grams with WikiText-2 test, "
                         "the evaluation set", hint=f"remove the WikiText-2 test text from the {use} data")
