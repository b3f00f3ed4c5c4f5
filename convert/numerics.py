"""Does a converted model still give the Keras model's answers?

Embeddings come from the device's interpreter (:mod:`fuselite.interpreter`, with
``num_threads`` explicit, never ``tf.lite.Interpreter``) and are scored with the
shared scorer, :class:`fuselite.scoring.Scorer`, which training's evaluation and the
runtime use too.  The task metrics are :mod:`fuselite.metrics`, the functions behind
``metrics.json``, so a variant's numbers sit next to the run's own.

This module imports no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from fuselite import metrics as m
from fuselite.interpreter import interpreter_class, interpreter_name, tensor_quantization
from fuselite.maps import split_outputs


class InterpreterError(RuntimeError):
    """The interpreter cannot load or run a converted model; the message says why."""


def tflite_embeddings(model_bytes: bytes, inputs: np.ndarray, num_threads: int, batch_size: int = 50,
                      progress=None) -> np.ndarray:
    """Runs a single-input model over ``inputs`` in batches; returns float32 outputs.

    Inputs are quantized and outputs dequantized with the model's own parameters,
    exactly as the runtime does.  ``progress``, if given, is called with the number
    of inputs of each batch done (a progress bar's ``update``).
    """
    interpreter = _interpreter(model_bytes, num_threads)
    index = interpreter.get_input_details()[0]["index"]
    outputs, size = [], 0
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        if len(batch) != size:
            interpreter.resize_tensor_input(index, [len(batch), *batch.shape[1:]])
            interpreter.allocate_tensors()
            size = len(batch)
        detail, (out, _) = interpreter.get_input_details()[0], split_outputs(interpreter.get_output_details())
        interpreter.set_tensor(index, quantize_input(batch, detail))
        interpreter.invoke()
        outputs.append(_dequantize(interpreter.get_tensor(out["index"]), out))
        if progress is not None:
            progress(len(batch))
    return np.concatenate(outputs)


def io_details(model_bytes: bytes) -> dict:
    """Input dtype and ``(scale, zero_point)`` of the input and the embedding output (``None``
    if float), and of a label map output (``map_quant``; ``has_map`` says whether there is one)."""
    interpreter = _interpreter(model_bytes, num_threads=1)
    inp, (out, label_map) = interpreter.get_input_details()[0], split_outputs(interpreter.get_output_details())
    return {
        "input_dtype": np.dtype(inp["dtype"]).name,
        "input_quant": tensor_quantization(inp),
        "output_quant": tensor_quantization(out),
        "has_map": label_map is not None,
        "map_quant": None if label_map is None else tensor_quantization(label_map),
    }


def compare(reference: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> dict:
    """How far ``probabilities`` ``[images, labels]`` are from the ``reference`` ones.

    ``top1_agreement``: share of images with the same top label (in multi-label data
    several labels often sit near 1, so near-ties flip; the decisions are the better
    guide there).  ``decision_agreement``: share of (image, label) pairs judged the same
    way at ``thresholds``.  ``max_score_error`` / ``mean_score_error``: absolute
    probability differences.
    """
    error = np.abs(probabilities.astype(np.float64) - reference)
    decisions = (reference >= thresholds) == (probabilities >= thresholds)
    return {
        "top1_agreement": top1_agreement(reference, probabilities),
        "decision_agreement": float(decisions.mean()),
        "max_score_error": float(error.max()),
        "mean_score_error": float(error.mean()),
    }


def top1_agreement(reference: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of images ``[images, labels]`` whose top label is the same in both."""
    return float(np.mean(np.argmax(reference, 1) == np.argmax(probabilities, 1)))


def task_metrics(probabilities: np.ndarray, targets: np.ndarray, task: str) -> dict:
    """The task metric of ``metrics.json``: ``{"top1": x}`` (single) or ``{"mAP": x}`` (multi)."""
    if task == "single":
        return {"top1": m.top1_accuracy(probabilities, targets)}
    return {"mAP": m.mean_average_precision(probabilities, targets)}


def phrase_ap(probabilities: np.ndarray, phrases: list[str], tags: list[list[str]]) -> float:
    """Mean AP of phrases never trained as labels (``heldout_combo_ap`` in ``metrics.json``)."""
    aps = [m.average_precision(probabilities[:, j], np.array([p in t for t in tags])) for j, p in enumerate(phrases)]
    aps = [ap for ap in aps if not np.isnan(ap)]
    return float(np.mean(aps)) if aps else float("nan")


def global_threshold(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """One F1-best threshold over every (image, label) pair, for labels typed at run time."""
    threshold = m.calibrate_thresholds(probabilities.reshape(-1, 1), targets.reshape(-1, 1))[0]
    return float(np.clip(threshold, 0.0, 1.0))


def _interpreter(model_bytes: bytes, num_threads: int):
    try:
        interpreter = interpreter_class()(model_content=model_bytes, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        package = interpreter_name().split(".")[0].replace("_", "-")
        raise InterpreterError(f"{package} cannot load the converted model: {first}") from exc
    return interpreter


def quantize_input(batch: np.ndarray, detail: dict) -> np.ndarray:
    """``batch`` in the input's dtype, quantized with the input's own parameters."""
    dtype = np.dtype(detail["dtype"])
    quant = tensor_quantization(detail)
    if quant is None or dtype.kind == "f":
        return batch.astype(dtype)
    scale, zero_point = quant
    info = np.iinfo(dtype)
    return np.clip(np.rint(batch.astype(np.float32) / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    quant = tensor_quantization(detail)
    values = values.astype(np.float32)
    if quant is None:
        return values
    return (values - quant[1]) * quant[0]
