"""The model names of lm cells: the kind of committed model and its training seed (drift-s1), and
for a dose-response cell its injection point too (trained-s0@residual), so that it never mixes
with the matrix's cells of the same model and scenario. Kept apart from lm_cells (torch, ONNX) so
that the report and the command line can read names cheaply."""


def lm_model(seed: int, kind: str = "trained", inject: str | None = None) -> str:
    return f"{kind}-s{seed}" + (f"@{inject}" if inject else "")


def parse_lm_model(model: str) -> tuple[str, int, str | None]:
    """(kind, seed, injection point or None) of an lm model name."""
    name, _, inject = model.partition("@")
    kind, _, seed = name.rpartition("-s")
    return kind, int(seed), inject or None


def is_dose(model: str) -> bool:
    """Whether an lm cell's model name is a dose-response cell's."""
    return parse_lm_model(model)[2] is not None
