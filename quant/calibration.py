"""Calibration data for static quantization: a named scenario's hidden states (or, for a whole
language model, its inputs), checked and hashed."""

import hashlib
from dataclasses import dataclass

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ffnbench.errors import UsageError


@dataclass(frozen=True)
class Calibration:
    scenario: str
    data: np.ndarray  # (n_requests, seq_len, d_model) float32

    @property
    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.data, np.float32).tobytes()).hexdigest()

    def describe(self) -> dict:
        return {"scenario": self.scenario, "sha256": self.sha256, "shape": list(self.data.shape)}

    def check(self, d_model: int) -> None:
        if self.data.ndim != 3:
            raise UsageError(f"calibration {self.scenario}: expected (requests, seq, d_model) data, "
                             f"got shape {self.data.shape}")
        if self.data.shape[-1] != d_model:
            raise UsageError(f"calibration {self.scenario}: width {self.data.shape[-1]} does not match "
                             f"the model's d_model {d_model}; calibrate with data of the model's width")
        bad = int(np.size(self.data) - np.count_nonzero(np.isfinite(self.data)))
        if bad:
            raise UsageError(f"calibration {self.scenario}: {bad} NaN/Inf values; calibrate on finite data")

    def feeds(self, input_name: str, d_model: int | None) -> list[dict[str, np.ndarray]]:
        """One feed a request for the model's single input, once the data are checked."""
        self.check(d_model or self.data.shape[-1])
        return [{input_name: np.ascontiguousarray(self.data[i:i + 1], np.float32)} for i in range(len(self.data))]


@dataclass(frozen=True)
class LMCalibration:
    """Calibration of a whole language model: the graph's inputs (byte ids and a scenario's drift),
    one request a feed, as `export.lm_export.feeds` builds them."""

    scenario: str
    requests: tuple[dict[str, np.ndarray], ...]

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for feed in self.requests:
            for name in sorted(feed):
                digest.update(name.encode() + np.ascontiguousarray(feed[name]).tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"scenario": self.scenario, "sha256": self.sha256, "requests": len(self.requests),
                "tokens": int(sum(f["tokens"].size for f in self.requests))}

    def feeds(self, input_name: str, d_model: int | None) -> list[dict[str, np.ndarray]]:
        return list(self.requests)


class Reader(CalibrationDataReader):
    """Feeds ORT's calibrator one request at a time, as a served model would see them."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)
