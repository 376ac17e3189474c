"""Calibration data for static quantization: a named scenario's hidden states, checked and hashed."""

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


class Reader(CalibrationDataReader):
    """Feeds ORT's calibrator one request at a time, as a served model would see them."""

    def __init__(self, calibration: Calibration, input_name: str):
        self._batches = iter(calibration.data[i:i + 1] for i in range(len(calibration.data)))
        self._input_name = input_name

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: np.ascontiguousarray(batch, np.float32)}
