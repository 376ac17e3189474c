"""The model names of lm cells: the kind of committed model and its training seed (drift-s1), and
for a dose-response cell its injection point too (trained-s0@residual), so that its key never
mixes with the matrix's cells of the same model and scenario. A name is made from a cell's fields
for keys and reports, never parsed back: records carry pair, seed, inject and study."""


def lm_model(seed: int, kind: str = "trained", inject: str | None = None) -> str:
    return f"{kind}-s{seed}" + (f"@{inject}" if inject else "")
