"""What a platform serves and how much quality it will give up: the deployment profile and the
quality budget the decision is made for (`[deployment]` in TOML, `--budget METRIC>=X`)."""

import dataclasses
import math
import operator
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ffnbench.errors import UsageError
from ffnbench.quant import FAMILIES

# Families a platform can serve: the quantized ones, and fp32 itself.
SERVED = ("fp32", *FAMILIES)
# Budget metrics: figures every lm cell keeps per window, so a budget is checked on the same windows
# the verdicts read. kld_mean is kl_to_fp32 under llama.cpp's name; same_top1 likewise.
BUDGET_METRICS = {"same_top1": "same_top1", "top1_agreement": "same_top1", "kld_mean": "kl_to_fp32",
                  "kl_to_fp32": "kl_to_fp32", "delta_bpb": "delta_bpb"}
DEFAULT_BUDGET = "same_top1>=0.99"  # llama.cpp users' usual reading: 99 in 100 next tokens unchanged
OPS = {">=": operator.ge, "<=": operator.le}
KEYS = ("families", "machine_class", "scenarios", "budget")


@dataclass(frozen=True)
class Budget:
    """One metric and its bound: a recipe meets it when its mean over seeds and windows does."""

    metric: str
    op: str
    bound: float
    stated: bool = False  # False: the default, and the memo says so

    @property
    def window_metric(self) -> str:
        return BUDGET_METRICS[self.metric]

    def met(self, value: float) -> bool:
        return OPS[self.op](value, self.bound)

    def text(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_budget(spec: str | None, where: str = "--budget") -> Budget:
    """`same_top1>=0.99` or `kld_mean<=1e-3`; None gives the default budget."""
    if spec is None:
        return dataclasses.replace(parse_budget(DEFAULT_BUDGET), stated=False)
    match = re.fullmatch(r"\s*([a-z_0-9]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*", spec)
    if not match:
        raise UsageError(f"{where}: '{spec}' is not METRIC>=X or METRIC<=X; e.g. {DEFAULT_BUDGET} or kld_mean<=1e-3")
    metric, op, bound = match.groups()
    if metric not in BUDGET_METRICS:
        raise UsageError(f"{where}: unknown metric '{metric}'; choose one of {', '.join(BUDGET_METRICS)}")
    try:
        value = float(bound)
    except ValueError:
        raise UsageError(f"{where}: '{bound}' is not a number; e.g. {DEFAULT_BUDGET}") from None
    return Budget(metric, op, value, stated=True)


@dataclass(frozen=True)
class Deployment:
    """Served families with their share of traffic (normalised to 1), the machine class the
    platform runs on (None: the runs'), and the drift scenarios its domains see (None: every
    scenario the runs measured downstream)."""

    families: dict[str, float] = field(default_factory=lambda: {f: 1 / len(SERVED[1:]) for f in SERVED[1:]})
    machine_class: str | None = None
    scenarios: tuple[str, ...] | None = None
    stated: bool = False  # False: the default profile, and the memo says so

    def to_dict(self) -> dict:
        return {"families": self.families, "machine_class": self.machine_class,
                "scenarios": list(self.scenarios) if self.scenarios else None, "stated": self.stated}


def deployment_from_table(table: dict, where: str) -> tuple[Deployment, Budget | None]:
    """A `[deployment]` table: the profile, and its budget where it names one."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise UsageError(f"{where}: [deployment] unknown key '{unknown[0]}'; known: {', '.join(KEYS)}")
    families = table.get("families")
    if families is None:
        shares = Deployment().families
    elif isinstance(families, list) and all(isinstance(f, str) for f in families) and families:
        shares = {f: 1.0 for f in families}  # equal shares
    elif isinstance(families, dict) and families:
        shares = families
    else:
        raise UsageError(f"{where}: [deployment] families must be a table of shares or a list, e.g. "
                         "families = {int8-dynamic = 0.5, fp16 = 0.3, int4 = 0.2}")
    for name, share in shares.items():
        if name not in SERVED:
            raise UsageError(f"{where}: [deployment] families: unknown family '{name}'; choose from "
                             f"{', '.join(SERVED)}")
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < math.inf:
            raise UsageError(f"{where}: [deployment] families: {name}'s share must be a positive number, got {share!r}")
    total = sum(shares.values())
    scenarios = table.get("scenarios")
    if scenarios is not None and not (isinstance(scenarios, list) and scenarios
                                      and all(isinstance(s, str) for s in scenarios)):
        raise UsageError(f"{where}: [deployment] scenarios must be a non-empty list of names, e.g. "
                         "scenarios = [\"production\", \"massive\"]")
    machine = table.get("machine_class")
    if machine is not None and not isinstance(machine, str):
        raise UsageError(f"{where}: [deployment] machine_class must be a string such as \"cpu-avx512-vnni\"")
    if "budget" in table and not isinstance(table["budget"], str):
        raise UsageError(f"{where}: [deployment] budget must be a string such as \"{DEFAULT_BUDGET}\"")
    budget = parse_budget(table["budget"], f"{where}: [deployment] budget") if "budget" in table else None
    return Deployment({k: v / total for k, v in shares.items()}, machine,
                      tuple(scenarios) if scenarios else None, stated=True), budget


def load_deployment(path: Path) -> tuple[Deployment, Budget | None]:
    """A TOML file with a [deployment] table (a run config that has one will do)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--deployment: no file at {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--deployment: {path} is not valid TOML ({e})") from None
    except IsADirectoryError:
        raise UsageError(f"--deployment: {path} is a directory; give a TOML file with a [deployment] table") from None
    if not isinstance(data.get("deployment"), dict):
        raise UsageError(f"--deployment: {path} has no [deployment] table; add one, e.g. [deployment] "
                         "families = {int8-dynamic = 0.5, fp16 = 0.5}")
    return deployment_from_table(data["deployment"], f"--deployment {path}")
