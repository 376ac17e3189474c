"""Tolerances as data: `Check(metric, limit, unit)` parsed from strings like `p50_ms:+15%`.

A leading '-' allows a drop (the metric is better high), '+' a rise (better low). Units: `dB`
and no unit are absolute, `pp` is percentage points of a 0-1 fraction, `%` is relative. A unit
must fit its metric: dB only for a metric in decibels, pp only for a fraction, % for anything not
already on a log scale; no unit means the metric's own unit.
"""

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ffnbench.bench.cells.lm_metrics import LM_METRICS
from ffnbench.bench.cells.metrics import ALL_METRICS
from ffnbench.errors import UsageError

LATENCY_METRICS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "tokens_per_s", "resident_mb", "peak_call_mb",
                   "model_bytes")
FRACTIONS = {"cosine", "top1_agreement", "same_top1", "delta_p_mean", "delta_p_rms", "nonfinite_rate",
             "norm_positive_fraction", "preact_sign_flip_rate", "spike_token_share", "u8s8_saturation_rate"}
# delta_p_mean: a quantization takes probability from fp32's top token; a regression takes more.
HIGHER_IS_BETTER = {"sqnr_db", "centered_sqnr_db", "cosine", "top1_agreement", "same_top1", "delta_p_mean",
                    "fp32_drift_db", "tokens_per_s"}
GATEABLE = tuple(dict.fromkeys((*ALL_METRICS, *LM_METRICS, *LATENCY_METRICS)))
# delta_bpb (lm cells): 0.01 bits per byte is about 0.6 % of the trained pair's held-out 1.72-1.74.
DEFAULTS = ("sqnr_db:-1dB", "centered_sqnr_db:-1dB", "top1_agreement:-0.5pp", "nonfinite_rate:+0",
            "delta_bpb:+0.01", "p50_ms:+15%")
FORM = re.compile(r"^(?P<metric>[a-z0-9_]+):(?P<sign>[+-])(?P<value>\d+(\.\d+)?)(?P<unit>dB|pp|%)?$")


@dataclass(frozen=True)
class Check:
    metric: str
    limit: float  # in the metric's own units after conversion (pp -> fraction; % stays relative)
    relative: bool
    spec: str

    @property
    def latency(self) -> bool:
        return self.metric in LATENCY_METRICS

    def allowed(self, base: float) -> float:
        """The worst value that still passes, given the baseline's value."""
        margin = abs(base) * self.limit if self.relative else self.limit
        return base - margin if self.metric in HIGHER_IS_BETTER else base + margin

    def passes(self, base: float, new: float) -> bool:
        bound = self.allowed(base)
        return new >= bound if self.metric in HIGHER_IS_BETTER else new <= bound


def parse(spec: str) -> Check:
    match = FORM.match(spec.strip())
    if not match:
        raise UsageError(f"tolerance '{spec}' does not parse; the form is METRIC:[+-]NUMBER[dB|pp|%], "
                         "e.g. centered_sqnr_db:-1dB, top1_agreement:-0.5pp, p50_ms:+15%")
    metric, sign, value, unit = match["metric"], match["sign"], float(match["value"]), match["unit"]
    if metric not in GATEABLE:
        raise UsageError(f"tolerance '{spec}': unknown metric '{metric}'; gateable: {', '.join(GATEABLE)}")
    better_high = metric in HIGHER_IS_BETTER
    if (sign == "-") != better_high:
        direction = "a drop, '-'" if better_high else "a rise, '+'"
        raise UsageError(f"tolerance '{spec}': {metric} regresses by {direction}; write e.g. "
                         f"{metric}:{'-' if better_high else '+'}{match['value']}{unit or ''}")
    _check_unit(spec, metric, unit)
    limit = value / 100 if unit in ("pp", "%") else value
    return Check(metric, limit, unit == "%", spec.strip())


def _check_unit(spec: str, metric: str, unit: str | None) -> None:
    in_db = metric.endswith("_db")
    fits = {"dB": in_db, "pp": metric in FRACTIONS, "%": not in_db, None: True}[unit]
    if not fits:
        allowed = "dB or no unit (dB)" if in_db else ("pp, % or no unit" if metric in FRACTIONS else "% or no unit")
        example = "1dB" if in_db else ("0.5pp" if metric in FRACTIONS else "15%")
        raise UsageError(f"tolerance '{spec}': {unit} does not fit {metric}; it takes {allowed}, "
                         f"e.g. {metric}:{spec.split(':', 1)[1][0]}{example}")


def checks(overrides: list[str] = ()) -> dict[str, Check]:
    """The defaults, each replaced by an override for the same metric; overrides may add metrics."""
    out = {c.metric: c for c in map(parse, DEFAULTS)}
    out.update({c.metric: c for c in map(parse, overrides)})
    return out


def load_tolerances(path: str | None) -> list[str]:
    """The tolerance specs of a TOML file (`tolerances = ["metric:+N%", ...]`); none without a file."""
    if not path:
        return []
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--tolerances: no file at {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--tolerances: {path} is not valid TOML ({e})") from e
    if set(data) - {"tolerances"} or not isinstance(data.get("tolerances", []), list):
        raise UsageError(f"--tolerances: {path} takes one key, tolerances = [\"metric:+N%\", ...]")
    if not all(isinstance(spec, str) for spec in data.get("tolerances", [])):
        raise UsageError("--tolerances: every tolerance is a string, e.g. \"p50_ms:+15%\"")
    return data.get("tolerances", [])
