"""Scenarios: seeded, parametric hidden states with the production drift (shift, magnitude, outliers)."""

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ffnbench.errors import UsageError
from ffnbench.files import locate, recorded_path, sha256_file


@dataclass(frozen=True)
class Scenario:
    name: str = "clean"
    mean_shift: float = 0.0  # positive offset, in units of the feature std (which is 1)
    shift_fraction: float = 0.0  # share of features that carry the offset
    magnitude_sigma: float = 0.0  # per-request log-normal scale: exp(sigma · z), z ~ N(0, 1)
    outlier_channels: int = 0  # features whose values are scaled by outlier_scale
    outlier_scale: float = 1.0
    mixed_batch: bool = False  # True: all requests share one batch (one dynamic-quant range)
    # Massive activations (Sun et al. 2024): a few fixed channels carry a persistent offset of
    # massive_scale to 10 × massive_scale times the median |x|, each with its own fixed sign, the same
    # channels in every request and draw; in a whole model from layer massive_from_layer on.
    massive_channels: int = 0
    massive_scale: float = 1000.0
    massive_from_layer: int = 1

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean_shift) and self.mean_shift >= 0):
            raise UsageError(f"scenario {self.name}: mean_shift must be finite and >= 0, got {self.mean_shift}")
        if not 0 <= self.shift_fraction <= 1:
            raise UsageError(f"scenario {self.name}: shift_fraction must lie in [0, 1], got {self.shift_fraction}")
        if not (np.isfinite(self.magnitude_sigma) and self.magnitude_sigma >= 0):
            raise UsageError(f"scenario {self.name}: magnitude_sigma must be finite and >= 0")
        if self.outlier_channels < 0 or not (np.isfinite(self.outlier_scale) and self.outlier_scale > 0):
            raise UsageError(f"scenario {self.name}: outlier_channels must be >= 0 and outlier_scale > 0")
        if self.massive_channels < 0 or not (np.isfinite(self.massive_scale) and self.massive_scale > 0) \
                or self.massive_from_layer < 0:
            raise UsageError(f"scenario {self.name}: massive_channels and massive_from_layer must be >= 0 and "
                             "massive_scale > 0")

    def generate(self, n_requests: int, seq_len: int, d_model: int, seed: int = 0) -> np.ndarray:
        """Hidden states (n_requests, seq_len, d_model), float32, identical bit for bit per seed."""
        return self._states(n_requests, seq_len, d_model, seed, domain_seed=seed)

    def _states(self, n_requests: int, seq_len: int, d_model: int, seed: int, domain_seed: int) -> np.ndarray:
        """Requests of `seed` (base states, magnitudes) in the domain of `domain_seed` (which features
        shift and by how much, which are outliers)."""
        for field, value in (("n_requests", n_requests), ("seq_len", seq_len), ("d_model", d_model)):
            if value <= 0:
                raise UsageError(f"scenario {self.name}: {field} must be positive, got {value}")
        base = _rng(seed, "base").standard_normal((n_requests, seq_len, d_model))
        gain, offset, _ = self.affine(n_requests, d_model, domain_seed)
        _, _, scale = self.affine(n_requests, d_model, seed)
        offset = offset + self.massive_offset(d_model)
        return ((base * gain + offset) * scale[:, None, None]).astype(np.float32)

    def massive_offset(self, d_model: int) -> np.ndarray:
        """(d_model,) the massive channels' persistent offsets in units of the feature std (the median
        |x| of unit-std states is 0.6745 of it); zero elsewhere. Fixed channels and signs, not drawn
        per seed: a model's massive channels are its own, whatever the request."""
        offset = np.zeros(d_model)
        if self.massive_channels:
            rng = _rng(0, "massive")
            channels = rng.choice(d_model, min(self.massive_channels, d_model), replace=False)
            size = self.massive_scale * MEDIAN_ABS_NORMAL * 10 ** rng.random(len(channels))
            offset[channels] = np.where(rng.random(len(channels)) < 0.5, -1.0, 1.0) * size
        return offset

    def affine(self, n_requests: int, d_model: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The drift as (h·gain + offset)·scale on unit-std states: gain and offset per feature
        (d_model,), scale per request (n_requests,). A whole model applies it to its own hidden
        states, the offset in units of each feature's std there."""
        # Separate streams per ingredient, so turning one knob leaves the others' draws unchanged.
        gain, offset, scale = np.ones(d_model), np.zeros(d_model), np.ones(n_requests)
        if self.outlier_channels:
            channels = _rng(seed, "outliers").choice(d_model, min(self.outlier_channels, d_model), replace=False)
            gain[channels] = self.outlier_scale
        if self.mean_shift and self.shift_fraction:
            rng = _rng(seed, "shift")
            shifted = rng.random(d_model) < self.shift_fraction
            # Each biased feature by a different positive amount, mean `mean_shift`.
            offset = np.where(shifted, self.mean_shift * rng.uniform(0.5, 1.5, d_model), 0.0)
        if self.magnitude_sigma:
            scale = np.exp(self.magnitude_sigma * _rng(seed, "magnitude").standard_normal(n_requests))
        return gain, offset, scale

    def calibration_data(self, n_requests: int, seq_len: int, d_model: int, seed: int = 0) -> np.ndarray:
        """Hidden states that calibrate static quantization and set a mitigation's statistics: other
        requests of the same domain. The next seed's base states and request magnitudes, so
        calibration never sees the states a run evaluates on (those of `seed`); `seed`'s per-feature
        drift, since a domain's persistent shift (its features, their offsets) is its own: a shift set
        on another draw of the features calibrates on another domain, not on this one."""
        return self._states(n_requests, seq_len, d_model, seed + 1, domain_seed=seed)

    def replace(self, **changes) -> "Scenario":
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        return dataclasses.asdict(self)

    def unshifted(self) -> "Scenario":
        """The same draws without the mean shift: the base input that fp32_drift_db compares with."""
        return self.replace(mean_shift=0.0, massive_channels=0)


@dataclass(frozen=True)
class Replay:
    """Captured hidden states from a .npy or .safetensors file, (n, d) or (b, s, d), replayed as
    captured (their own sizes; a run's n_requests, seq_len and seed do not apply).

    A capture serves both roles of a scenario without overlap: its first `calibration_share` of
    requests calibrates static quantization and the rest is evaluated; one request (an (n, d)
    capture) is split along its tokens instead. The split holds whether or not a run calibrates on
    it, so its evaluation data do not depend on the run; `calibration_share = 0` evaluates the whole
    capture and cannot calibrate.
    """

    name: str
    path: Path  # as the config wrote it: relative to `base`, or absolute
    tensor: str | None = None  # which tensor of a .safetensors file; default: its only one
    mixed_batch: bool = True  # replayed as captured: one batch
    calibration_share: float = 0.25
    # Synthetic drift on top of the real traffic: the scenario's shift (in units of each feature's
    # std in the capture), magnitude and outliers, applied after loading.
    drift: Scenario | None = None
    base: Path = Path(".")  # the config's folder (or --weights-dir); not recorded
    sha256: str | None = None  # the file a run recorded: another file is refused

    @property
    def file(self) -> Path:
        return locate(self.path, self.base, self.sha256)

    def __post_init__(self) -> None:
        if not 0 <= self.calibration_share < 1:
            raise UsageError(f"scenario {self.name}: calibration_share must lie in [0, 1), got "
                             f"{self.calibration_share}")

    def generate(self, n_requests: int, seq_len: int, d_model: int, seed: int = 0) -> np.ndarray:
        """The evaluation part of the capture, (requests, seq, d_model) float32."""
        data = self._checked(d_model)
        return self._drifted(self._split(data)[1], data, seed)

    def calibration_data(self, n_requests: int, seq_len: int, d_model: int, seed: int = 0) -> np.ndarray:
        """The calibration part of the capture, disjoint from what generate() returns."""
        if self.calibration_share == 0:
            raise UsageError(f"scenario {self.name}: calibration_share = 0 keeps the whole capture for evaluation; "
                             "set a share (e.g. 0.25) to calibrate on it")
        data = self._checked(d_model)
        return self._drifted(self._split(data)[0], data, seed + 1)

    def _drifted(self, part: np.ndarray, whole: np.ndarray, seed: int) -> np.ndarray:
        if self.drift is None:
            return part
        gain, offset, scale = self.drift.affine(part.shape[0], part.shape[-1], seed)
        std = whole.reshape(-1, whole.shape[-1]).std(axis=0)  # the capture's own feature std, both parts alike
        return ((part * gain + offset * std) * scale[:, None, None]).astype(np.float32)

    def _split(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.calibration_share == 0:
            return data[:0], data
        axis = 0 if data.shape[0] >= 2 else 1  # whole requests where there are several
        size = data.shape[axis]
        if size < 2:
            raise UsageError(f"scenario {self.name}: {self.file} holds one token; a capture needs at least 2 "
                             "requests or tokens, split between calibration and evaluation")
        k = min(size - 1, max(1, round(size * self.calibration_share)))
        return (data[:k], data[k:]) if axis == 0 else (data[:, :k], data[:, k:])

    def _checked(self, d_model: int) -> np.ndarray:
        data = self._load()
        if data.ndim == 2:
            data = data[None]  # (n, d): one request of n tokens
        if data.ndim != 3:
            raise UsageError(f"scenario {self.name}: {self.file} holds shape {data.shape}; "
                             "expected (n, d) or (b, s, d)")
        if data.shape[-1] != d_model:
            raise UsageError(f"scenario {self.name}: {self.file} has width {data.shape[-1]}, the model's d_model is "
                             f"{d_model}; capture hidden states of this model size")
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise UsageError(f"scenario {self.name}: {self.file} holds {bad} NaN/Inf values; replay finite states")
        return data.astype(np.float32)

    def _load(self) -> np.ndarray:
        file = self.file  # located once: with a recorded sha256, locating hashes the candidates
        if not file.is_file():
            want = f" (the run used sha256 {self.sha256}; give its folder with --weights-dir)" if self.sha256 else ""
            raise UsageError(f"scenario {self.name}: no file at {file}{want}")
        if self.sha256 and sha256_file(file) != self.sha256:
            raise UsageError(f"scenario {self.name}: {file} is not the file the run used (sha256 {self.sha256}); "
                             "give that file, or its folder with --weights-dir")
        try:
            if file.suffix == ".npy":
                return np.load(file, allow_pickle=False)
            tensors = load_file(str(file))
        except (ValueError, OSError, SafetensorError) as e:
            raise UsageError(f"scenario {self.name}: cannot read {file} ({e}); give .npy or .safetensors") from e
        if self.tensor is None and len(tensors) != 1:
            raise UsageError(f"scenario {self.name}: {self.file} holds {len(tensors)} tensors; name one with "
                             f"tensor = ... (one of {', '.join(sorted(tensors))})")
        key = self.tensor or next(iter(tensors))
        if key not in tensors:
            raise UsageError(f"scenario {self.name}: no tensor '{key}' in {self.file}")
        return tensors[key]

    def unshifted(self) -> "Replay | None":
        """The capture with its synthetic shift removed (other drift kept); a plain capture has none."""
        if self.drift is None or not self.drift.mean_shift:
            return None
        return dataclasses.replace(self, drift=self.drift.unshifted())

    def describe(self) -> dict:
        drift = {k: v for k, v in self.drift.describe().items() if k != "name" and v != getattr(Scenario(), k)} \
            if self.drift else {}
        file = self.file
        sha = sha256_file(file) if file.is_file() else self.sha256
        return {"name": self.name, "replay": recorded_path(self.path), "sha256": sha, "tensor": self.tensor,
                "calibration_share": self.calibration_share, **drift}


MEDIAN_ABS_NORMAL = 0.6745  # the median |x| of a standard normal, in its std


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


NAMED = {
    "clean": Scenario("clean"),
    **{f"shift-{s:g}": Scenario(f"shift-{s:g}", mean_shift=s, shift_fraction=0.9)
       for s in (0.5, 1, 2, 4, 8)},
    "magnitude-1": Scenario("magnitude-1", magnitude_sigma=1.0, mixed_batch=True),
    "magnitude-2": Scenario("magnitude-2", magnitude_sigma=2.0, mixed_batch=True),
    "outliers": Scenario("outliers", outlier_channels=4, outlier_scale=20.0),
    "production": Scenario("production", mean_shift=4.0, shift_fraction=0.9, magnitude_sigma=1.5,
                           mixed_batch=True),
    "massive": Scenario("massive", massive_channels=3, massive_scale=1000.0),
}


# Drift strength as an axis: the named scenarios along mean shift (feature std) and along request
# magnitude (sigma), each from `clean`, for dose-response curves.
SHIFTS = {name: spec.mean_shift for name, spec in NAMED.items() if name == "clean" or name.startswith("shift-")}
MAGNITUDES = {"clean": 0.0, "magnitude-1": 1.0, "magnitude-2": 2.0}

# Real drift for whole-model (lm) cells: held-out text of another domain through the model unchanged
# (code, which the trained pair never saw; the prose in chat markup, which it never saw either; the
# Python documentation topics, the clean text of a model that learned the `library` corpus),
# scenario name -> corpus name (models/corpus.py).
TEXT_DOMAINS = {"domain-code": "code", "domain-chat": "chat", "domain-pydoc": "prose"}


def scenario(name: str) -> Scenario:
    if name not in NAMED:
        raise UsageError(f"scenario: unknown '{name}'; choose one of {', '.join(NAMED)}")
    return NAMED[name]


REPLAY_KEYS = ("replay", "tensor", "calibration_share")


def replay_from_table(name: str, path: Path, table: dict, base: Path) -> Replay:
    """A replay (its path relative to `base`) with the synthetic drift its table adds on top, if any."""
    drift = {k: v for k, v in table.items() if k not in (*REPLAY_KEYS, "name", "sha256")}
    return Replay(name, path, table.get("tensor"), calibration_share=table.get("calibration_share", 0.25),
                  drift=Scenario(name, **drift) if drift else None, base=Path(base), sha256=table.get("sha256"))
