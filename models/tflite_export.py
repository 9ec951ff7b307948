"""Full-integer TFLite export shared by every model the box runs (TensorFlow: training extra only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def export_int8(model, representative: np.ndarray, path: Path, *, max_calibration: int | None = None,
                seed: int = 0) -> bytes:
    """Convert a Keras model to int8-in, int8-out TFLite and write it to ``path``.

    Parameters
    ----------
    model : tf.keras.Model
        The trained float model.
    representative : numpy.ndarray
        Input windows (first axis = examples) the converter calibrates the int8 ranges on.
    path : Path
        Where the ``.tflite`` goes.
    max_calibration : int or None
        Calibrate on at most this many windows, drawn without replacement with ``seed`` (None: all).

    Returns
    -------
    bytes
        The flatbuffer that was written.
    """
    import tensorflow as tf

    rep = np.asarray(representative)
    if max_calibration is not None and len(rep) > max_calibration:
        rep = rep[np.random.default_rng(seed).choice(len(rep), size=max_calibration, replace=False)]
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([r[None].astype(np.float32)] for r in rep)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    blob = conv.convert()
    Path(path).write_bytes(blob)
    return blob
