"""Models of a run beyond the size presets: `[model.NAME]` tables naming one real FFN layer.

A table gives a local `.safetensors` file (`weights`, relative to the config's folder), the layer's
`prefix` and its `design`, plus what the file cannot say (`eps`, `gelu`, `bias`); or an FFN layer
of the committed trained pair (`trained = "A"`, `layer = 2`). Runs, reports and gates name it by
file name, sha256 and prefix, never by the path of the machine that ran it.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ffnbench import files
from ffnbench.errors import UsageError
from ffnbench.files import sha256_file
from ffnbench.models import FFNBlock, load_safetensors
from ffnbench.models.config import GELU_APPROXIMATIONS

KEYS = {"weights": str, "prefix": str, "design": str, "eps": float, "gelu": str, "bias": bool, "trained": str,
        "layer": int}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    design: str
    weights: str | None = None  # as written in the config: relative to `base`, or absolute
    prefix: str = ""
    eps: float | None = None
    gelu: str | None = None
    bias: bool | None = None
    trained: str | None = None  # "A" or "B": a layer of the committed trained pair
    layer: int | None = None
    base: str = "."  # the config's folder (or --weights-dir); where `weights` resolves (not recorded)
    sha256: str | None = None  # the file a run recorded: another file is refused

    def __post_init__(self) -> None:
        where = f"[model.{self.name}]"
        if self.trained is not None:
            if self.weights is not None:
                raise UsageError(f"{where}: give `weights` (a checkpoint file) or `trained` (the committed pair), "
                                 "not both")
            if self.trained not in ("A", "B") or self.layer is None:
                raise UsageError(f"{where}: `trained` is \"A\" or \"B\" and needs `layer`, e.g. trained = \"B\", "
                                 "layer = 0")
            if self.design != self.trained:
                raise UsageError(f"{where}: design {self.design} but trained pair model {self.trained}; "
                                 f"set design = \"{self.trained}\"")
        elif self.weights is None:
            raise UsageError(f"{where}: needs `weights = \"file.safetensors\"` (with `prefix`) or `trained = \"A\"`")
        if self.design not in ("A", "B"):
            raise UsageError(f"{where}: design must be A or B (real layers load as one of them), got "
                             f"{self.design!r}")
        if self.gelu is not None and self.gelu not in GELU_APPROXIMATIONS:
            raise UsageError(f"{where}: gelu must be one of {', '.join(GELU_APPROXIMATIONS)}, got {self.gelu!r}")
        if self.eps is not None and not self.eps > 0:
            raise UsageError(f"{where}: eps must be positive, got {self.eps}")

    @property
    def path(self) -> Path:
        return files.locate(self.weights, self.base, self.sha256)

    def build(self, residual: bool) -> FFNBlock:
        """The layer as an FFNBlock, checked: the file exists, the prefix matches, the design fits."""
        if self.trained is not None:
            from ffnbench.models.pair import trained_ffn

            block = trained_ffn(self.trained, self.layer, residual=residual)
            if self.sha256 and block.source["sha256"] != self.sha256:
                raise UsageError(f"[model.{self.name}]: the trained pair's model {self.trained} is not the one the run "
                                 f"used (sha256 {self.sha256}); restore it (git checkout)")
            return block
        path = self.path
        if self.sha256 and not path.is_file():
            raise UsageError(f"[model.{self.name}]: no file at {path} (the run used sha256 {self.sha256}); give "
                             "its folder with --weights-dir")
        if self.sha256 and sha256_file(path) != self.sha256:  # before reading: a changed file may not even load
            raise UsageError(f"[model.{self.name}]: {path} is not the file the run used (sha256 {self.sha256}); "
                             "give that file, or its folder with --weights-dir")
        overrides = {k: getattr(self, k) for k in ("eps", "gelu", "bias") if getattr(self, k) is not None}
        try:
            block = load_safetensors(path, self.design, self.prefix, residual=residual, **overrides)
        except UsageError as e:
            raise UsageError(f"[model.{self.name}]: {e}") from None
        # Recorded by content; the path stays as the config wrote it (relative to the config's folder).
        block.source = {"kind": "safetensors", "file": path.name, "path": files.recorded_path(self.weights),
                        "sha256": block.source["sha256"], "prefix": self.prefix}
        return block

    def describe(self) -> dict:
        """What a run records: no absolute path (a copied run directory stays valid elsewhere)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k not in ("name", "base")}
        if self.weights is not None:
            out["weights"] = files.recorded_path(self.weights)
            path = self.path
            if path.is_file():
                out["sha256"] = sha256_file(path)
        if self.trained is not None:
            from ffnbench.models.pair import trained_dir

            out["sha256"] = json.loads((trained_dir(self.trained) / "manifest.json").read_text())["sha256"]
        return out


def fits(value, kind: type) -> bool:
    """A TOML value of the type a key takes: a bool only where a bool is wanted, an int where a float is."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def parse(path: Path, tables) -> dict[str, ModelSpec]:
    """[model.NAME] tables of the config at `path`."""
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise UsageError(f"config {path}: 'model' must hold tables, e.g. [model.mine] weights = \"layer.safetensors\"")
    specs = {}
    for name, table in tables.items():
        for key, value in table.items():
            if key not in KEYS:
                raise UsageError(f"config {path}: [model.{name}] unknown key '{key}'; known: {', '.join(KEYS)}")
            kind = KEYS[key]
            if not fits(value, kind):
                raise UsageError(f"config {path}: [model.{name}] '{key}' must be {kind.__name__}, "
                                 f"got {type(value).__name__}")
        if "design" not in table:
            raise UsageError(f"config {path}: [model.{name}] needs design = \"A\" or \"B\"")
        specs[name] = ModelSpec(name, base=str(Path(path).parent), **table)
    return specs


def source_line(name: str, described: dict) -> str:
    """How a report or gate names a real layer: file name, sha256 and prefix (or the trained pair's layer)."""
    if "trained" in described:
        return f"`{name}`: the trained pair's model {described['trained']}, FFN layer {described['layer']}"
    sha = described.get("sha256")
    return (f"`{name}`: {Path(described['weights']).name} (sha256 {sha[:12] if sha else 'unknown'}…), prefix "
            f"`{described.get('prefix', '')}`, design {described['design']}")
