"""Per-coefficient normalisation fitted on training clips only, and the integer front end's
last step to int8.

Float front end: ``global`` standardises with statistics over all training frames;
``utterance`` first standardises each clip over its own frames (CMVN), then by the global
statistics of the CMVN'd training frames; ``none`` is the identity.

Integer front end: its values (``lstmq.frontend``; per-clip CMVN is already done there for
``utterance``) are standardised by training statistics and quantized to int8 with the input
clip, by integer arithmetic (``FeatureQuantizer``); the model is fed ``q * clip / 127``, so
training sees the device's int8 features exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

NORMALIZE_MODES = ("global", "utterance", "none")
_STD_FLOOR = 1e-6  # a constant coefficient (or a one-frame clip) is not blown up


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
    """Statistics of the training clips; with ``quantizer``, the integer front end's."""

    mean: np.ndarray  # <float32>[F]
    std: np.ndarray  # <float32>[F]
    mode: str = "global"
    quantizer: Any = None  # lstmq.frontend.FeatureQuantizer of the integer front end
    input_clip: float | None = None  # the int8 bound the quantizer was fitted for
    value_scale: float = 1.0  # integer units per real unit of the front end's values

    @property
    def integer(self) -> bool:
        return self.quantizer is not None

    def apply(self, features: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """<float32>[frames, F] arrays, normalised (integer front end: ``q * clip / 127``)."""
        out = []
        for clip in features:
            if np.ndim(clip) != 2 or np.shape(clip)[1] != self.mean.shape[0]:
                raise ValueError(f"expected [frames, {self.mean.shape[0]}] features, got "
                                 f"{np.shape(clip)}")
            if self.integer:
                out.append(self.quantize(clip).astype(np.float32)
                           * np.float32(self.input_clip / 127.0))
                continue
            clip = np.asarray(clip, dtype=np.float32)
            if self.mode == "utterance":
                clip = _cmvn(clip)
            if self.mode != "none":
                clip = ((clip - self.mean) / self.std).astype(np.float32)
            out.append(clip)
        return tuple(out)

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """<int32>[..., F] integer front-end values -> <int8>[..., F] model input."""
        from lstmq.frontend import quantize_features  # pylint: disable=import-outside-toplevel

        return np.asarray(quantize_features(self.quantizer, np.asarray(values, np.int32)))

    def with_quantizer(self, input_clip: float, value_scale: float) -> Normalizer:
        """The integer front end's normalizer, completed once the input clip is known."""
        from lstmq.frontend import FeatureQuantizer  # pylint: disable=import-outside-toplevel

        quantizer = FeatureQuantizer.fit(self.mean, self.std, input_clip, value_scale)
        return dataclasses.replace(self, quantizer=quantizer, input_clip=float(input_clip),
                                   value_scale=float(value_scale))

    def standardize(self, values: np.ndarray) -> np.ndarray:
        """Float standardised values of integer front-end values (for calibration only)."""
        return ((np.asarray(values, np.float64) / self.value_scale - self.mean) / self.std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        values = {"mode": self.mode, "mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.integer:
            values.update(quantizer=self.quantizer.to_dict(), input_clip=self.input_clip,
                          value_scale=self.value_scale)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Normalizer:
        """Inverse of to_dict."""
        mean = np.asarray(values["mean"], dtype=np.float32)
        std = np.asarray(values["std"], dtype=np.float32)
        if values["mode"] not in NORMALIZE_MODES or mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"not a normalizer: mode {values['mode']!r}, shapes {mean.shape} {std.shape}")
        quantizer = None
        if "quantizer" in values:
            from lstmq.frontend import FeatureQuantizer  # pylint: disable=import-outside-toplevel

            quantizer = FeatureQuantizer.from_dict(values["quantizer"])
        return cls(mean=mean, std=std, mode=values["mode"], quantizer=quantizer,
                   input_clip=values.get("input_clip"),
                   value_scale=float(values.get("value_scale", 1.0)))


def _cmvn(clip: np.ndarray) -> np.ndarray:
    clip = np.asarray(clip, dtype=np.float64)
    std = np.maximum(clip.std(axis=0), _STD_FLOOR)
    return ((clip - clip.mean(axis=0)) / std).astype(np.float32)


def fit_normalizer(features: Sequence[np.ndarray], mode: str = "global",
                   value_scale: float | None = None) -> Normalizer:
    """Fit normalisation statistics; pass the TRAINING clips' features only.

    Args:
      features: <float32>[frames, F] arrays (integer front end: <int32> values).
      mode: "global", "utterance" or "none".
      value_scale: integer front end: its integer units per real unit. Its per-clip
        normalisation is already done, so ``utterance`` fits global statistics; the
        normalizer is completed by ``with_quantizer`` once the input clip is known.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize mode {mode!r} is not one of {NORMALIZE_MODES}")
    if len(features) == 0:
        raise ValueError("cannot fit a normalizer on no clips")
    widths = {np.shape(f)[-1] for f in features}
    if len(widths) != 1:
        raise ValueError(f"clips have different feature counts {sorted(widths)}")
    width = widths.pop()
    scale = 1.0 if value_scale is None else float(value_scale)
    if mode == "none":
        return Normalizer(np.zeros(width, np.float32), np.ones(width, np.float32), mode,
                          value_scale=scale)
    clips = [_cmvn(f) if mode == "utterance" and value_scale is None else f for f in features]
    frames = np.concatenate(clips).astype(np.float64) / scale
    std = np.maximum(frames.std(axis=0), _STD_FLOOR)
    return Normalizer(frames.mean(axis=0).astype(np.float32), std.astype(np.float32), mode,
                      value_scale=scale)
