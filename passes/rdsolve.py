"""The allocator's rate-distortion solver: one option (bits in the file, distortion) per tensor
and choice; the Lagrangian min sum D + lambda R bisected on lambda to fit the budget, then the
leftover bits spent greedily on the best distortion drop per bit."""
from __future__ import annotations

import itertools

Option = tuple[float, float]  # (bits in the file, distortion)


def parse_choices(text: str) -> list[dict[str, str]]:
    """'bits=2|3|4;group=64|128' -> every combination as a plan {param: value}."""
    axes = []
    for part in filter(None, text.split(";")):
        key, _, vals = part.partition("=")
        values = [v for v in vals.split("|") if v]
        if not key.strip() or not values:
            raise ValueError(text)
        axes.append([(key.strip(), v) for v in values])
    if not axes:
        raise ValueError(text)
    return [dict(combo) for combo in itertools.product(*axes)]


def solve(options: list[list[Option]], budget_bits: float) -> list[int]:
    """Choose one option per item minimising total distortion with total rate <= budget."""
    def pick(lam: float) -> list[int]:
        return [min(range(len(o)), key=lambda i, o=o: (o[i][1] + lam * o[i][0], o[i][0])) for o in options]

    def rate(ch: list[int]) -> float:
        return sum(o[c][0] for o, c in zip(options, ch))
    lo, hi = 0.0, 1.0
    while rate(pick(hi)) > budget_bits and hi < 1e30:
        hi *= 4
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if rate(pick(mid)) <= budget_bits else (mid, hi)
    choice = pick(hi)
    left = budget_bits - rate(choice)
    while True:  # greedy fill: best distortion drop per extra bit that still fits
        best = None
        for t, o in enumerate(options):
            r0, d0 = o[choice[t]]
            for i, (r, d) in enumerate(o):
                if d < d0 and 0 < r - r0 <= left:
                    gain = (d0 - d) / (r - r0)
                    if best is None or gain > best[0]:
                        best = (gain, t, i, r - r0)
        if best is None:
            return choice
        choice[best[1]] = best[2]
        left -= best[3]
