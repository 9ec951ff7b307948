"""Loading and running the box's TFLite models, verified by sha256 before they are trusted.

The runtime is ``ai-edge-litert`` (Google's maintained TFLite runtime: numpy 2, 64-bit Raspberry Pi OS).
Where only the older ``tflite-runtime`` wheel exists (it needs numpy < 2) we fall back to it. TensorFlow
itself is never imported here: it is a training-time dependency only.

Models are int8-quantised; :class:`TFLiteModel` hides the quantisation so callers pass and receive
float arrays in the model's real units.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from appliance.protocol.userfiles import json_loads

logger = logging.getLogger(__name__)


class ModelIntegrityError(RuntimeError):
    """The model file's sha256 is not the one its model card (or the config) promises."""


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise ImportError(
            "no TFLite runtime: install 'ai-edge-litert' (or 'tflite-runtime' where only it has a wheel)"
        ) from None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def load_model_card(path: str | Path) -> dict:
    """Read a model card JSON (``model_card.json``) as a dict.

    Raises
    ------
    ValueError
        When the file is not valid JSON or is not an object, naming the file.
    """
    p = Path(path)
    try:
        card = json_loads(p.read_text())
    except ValueError as e:  # nesting too deep included: a damaged card is a ValueError, never a crash
        raise ValueError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(card, dict):
        raise ValueError(f"{p}: a model card must be a JSON object")
    return card


class TFLiteModel:
    """One TFLite model with a single input and a single output tensor.

    Parameters
    ----------
    model_path : str or Path
        The ``.tflite`` file.
    expected_sha256 : str or None
        Hex digest the file must have. When None, the ``sha256`` of ``model_card.json`` beside the model
        is used if that card exists; a model with neither is loaded with a warning.
    num_threads : int
        Interpreter threads. One is right on the box: the models take microseconds and the acquisition
        thread must not be starved.

    Raises
    ------
    ModelIntegrityError
        When the file's digest differs from the expected one. Nothing is loaded.
    """

    def __init__(self, model_path: str | Path, *, expected_sha256: str | None = None, num_threads: int = 1):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if expected_sha256 is None:
            card = self.path.with_name("model_card.json")
            if card.is_file():
                expected_sha256 = load_model_card(card).get("sha256")
        self.sha256 = file_sha256(self.path)
        if expected_sha256 is None:
            import warnings

            warnings.warn(f"{self.path}: no expected sha256 (no model card); loading unverified", stacklevel=2)
        elif self.sha256 != expected_sha256.lower():
            raise ModelIntegrityError(
                f"{self.path}: sha256 {self.sha256} does not match the expected {expected_sha256}; refusing to load"
            )
        interpreter_cls, self.runtime = _interpreter_class()
        self._interp = interpreter_cls(model_path=str(self.path), num_threads=num_threads)
        self._interp.allocate_tensors()
        (self._in,) = self._interp.get_input_details()
        (self._out,) = self._interp.get_output_details()
        logger.info("loaded %s (%s, sha256 %s…)", self.path.name, self.runtime, self.sha256[:12])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the input tensor, batch dimension included."""
        return tuple(int(d) for d in self._in["shape"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the output tensor, batch dimension included."""
        return tuple(int(d) for d in self._out["shape"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the model on one input.

        Parameters
        ----------
        x : numpy.ndarray
            Float input of :attr:`input_shape` (the batch dimension may be omitted when it is 1).

        Returns
        -------
        numpy.ndarray
            Float output of :attr:`output_shape`, dequantised when the model is int8.
        """
        x = np.asarray(x, dtype=np.float32).reshape(self.input_shape)
        dtype = self._in["dtype"]
        if dtype != np.float32:
            scale, zero = self._in["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        y = self._interp.get_tensor(self._out["index"])
        if self._out["dtype"] != np.float32:
            scale, zero = self._out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y
