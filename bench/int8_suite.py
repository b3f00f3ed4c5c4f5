"""Where an int8 bundle's top label parts from float's, and what would close the gap.

    python -m fuselite.bench.suite int8-agreement RUN --data TEST.jsonl [--labels a,b,c] [--int16]

Issue 29 asks that int8 pick float's top label on at least 99 % of test pictures.  This
script takes one run's image tower apart, on the pictures of ``--data`` read at the run's
input size, and says how often each of these picks the float tower's top label:

* ``fp16``: the fp16 bundle's image model: how far a near-exact format gets;
* ``int8 output grid``: the float embedding rounded to the int8 output's fixed steps (1/128);
* ``int8 weights``: the float-input copy with every kernel on its int8 grid, as ``fuselite
  convert`` rounds it (:mod:`fuselite.convert.weight_grid`), with float activations;
* ``int8``: the int8 bundle's image model, as ``fuselite convert`` writes it;
* ``int16 activations`` (``--int16``): TFLite's experimental 16x8 mode, int8 weights and
  int16 activations (without the L2 normalisation, which that mode lacks; the embedding is
  normalised in numpy), with its latency;
* ``int8, N layers matching P in float`` (``--keep-float P``, repeatable): TFLite's
  quantization debugger leaves the layers whose output tensor names contain ``P`` (or one
  of its comma-separated parts) in float
  (selective quantization).  ``--layer-stats CSV`` dumps each quantized layer's own error
  (float inputs to each layer) and logs the largest.

Each row gives the agreement, the agreement where float's two best labels are more than
0.05 apart in probability, the embedding's median and lowest cosine with float, and the
milliseconds per picture of the TFLite rows on one interpreter thread.  The label set is
``--labels`` (e.g. openclipart's 14 categories) or the run's labels.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
CLEAR_MARGIN = 0.05  # float's two best labels further apart than this (probability) are no near tie
OUTPUT_STEP = 1.0 / 128  # TFLite's int8 L2 normalisation output scale (fixed)
TARGET = 0.99
BATCH = 32


@dataclass
class Row:
    """One way of running the tower, against float.

    Attributes:
        name: What ran.
        agreement: Share of pictures whose top label is float's.
        clear_agreement: The same over pictures where float's margin exceeds ``CLEAR_MARGIN``.
        differing: Pictures whose top label differs.
        cosine_median: Median cosine of the embedding with float's.
        cosine_min: Lowest such cosine.
        ms_per_image: Interpreter milliseconds per picture (TFLite rows only).
    """

    name: str
    agreement: float
    clear_agreement: float
    differing: int
    cosine_median: float
    cosine_min: float
    ms_per_image: float | None = None


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Per picture, the gap between its two most probable labels."""
    ranked = np.sort(probabilities, axis=1)
    return ranked[:, -1] - ranked[:, -2]


def compare(name: str, embeddings: np.ndarray, reference: np.ndarray, score,
            ms_per_image: float | None = None) -> Row:
    """``embeddings`` against float's ``reference``; ``score`` maps embeddings to label probabilities."""
    ours, theirs = score(embeddings), score(reference)
    same = ours.argmax(axis=1) == theirs.argmax(axis=1)
    clear = margins(theirs) > CLEAR_MARGIN
    ours_flat, theirs_flat = embeddings.reshape(len(embeddings), -1), reference.reshape(len(reference), -1)
    norms = np.linalg.norm(ours_flat, axis=1) * np.linalg.norm(theirs_flat, axis=1)
    cosines = np.sum(ours_flat * theirs_flat, axis=1) / np.maximum(norms, 1e-12)
    return Row(name, float(same.mean()), float(same[clear].mean()) if clear.any() else float("nan"),
               int((~same).sum()), float(np.median(cosines)), float(cosines.min()), ms_per_image)


def on_output_grid(embeddings: np.ndarray, step: float = OUTPUT_STEP) -> np.ndarray:
    """``embeddings`` rounded to the int8 output's steps (int8's range [-128, 127])."""
    return np.clip(np.round(embeddings / step), -128, 127) * step


def keras_embeddings(model, images: np.ndarray) -> np.ndarray:
    """A Keras tower's embeddings of uint8 images, in batches."""
    batches = [np.asarray(model(images[i:i + BATCH].astype(np.float32), training=False))
               for i in range(0, len(images), BATCH)]
    return np.concatenate(batches)


def tflite_embeddings(model_bytes: bytes, images: np.ndarray, normalise: bool = False) -> tuple[np.ndarray, float | None]:
    """A flatbuffer's dequantized embeddings of the images, as the board scores them (one per
    invoke, one thread; ``[N, D]``, or ``[N, cells, D]`` for a regional tower), made unit-length
    when ``normalise``, and its milliseconds per image after the first (which also sizes the
    tensors; None for a single image).

    It runs convert's own runner (:func:`fuselite.convert.numerics.tflite_embeddings`), which
    quantizes the input and dequantizes the output with the model's own parameters.
    """
    from fuselite.convert.numerics import tflite_embeddings as run_flatbuffer

    finished = []  # when each image was done: convert's runner reports every batch of one
    embeddings = run_flatbuffer(model_bytes, images, num_threads=1, batch_size=1,
                                progress=lambda _count: finished.append(time.perf_counter()))
    ms = 1000 * (finished[-1] - finished[0]) / (len(finished) - 1) if len(finished) > 1 else None
    if normalise:
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
    return embeddings, ms


def int16_activations_model(float_copy, calibration: np.ndarray) -> bytes:
    """The 16x8 flatbuffer of a float-input tower, its last layer (L2 normalisation) left off."""
    from fuselite.convert.tflite import representative_dataset
    from fuselite.train.backend import keras, tf

    unnormalised = keras.Model(float_copy.inputs, float_copy.layers[-2].output)
    converter = tf.lite.TFLiteConverter.from_keras_model(unnormalised)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calibration)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return bytes(converter.convert())


def int8_converter(float_copy, calibration: np.ndarray, float_fallback: bool = False):
    """The TFLite converter ``fuselite convert`` sets up for int8 (uint8 pixels in, int8 out);
    ``float_fallback`` also allows float builtins, for layers kept in float."""
    from fuselite.convert.tflite import _configure
    from fuselite.convert.variants import get_variant
    from fuselite.train.backend import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(float_copy)
    _configure(converter, get_variant("int8"), calibration)
    if float_fallback:
        converter.target_spec.supported_ops = [*converter.target_spec.supported_ops, tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def layer_errors(float_copy, calibration: np.ndarray, pictures: np.ndarray, out: Path) -> list[dict]:
    """TFLite's quantization debugger over ``pictures``: per quantized tensor (in graph order)
    its name and root mean square error in steps of its own scale, with float inputs to each
    layer; the whole dump goes to ``out`` (CSV)."""
    import csv

    from fuselite.train.backend import tf

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=int8_converter(float_copy, calibration),
        debug_dataset=lambda: ([picture[np.newaxis].astype(np.float32)] for picture in pictures))
    debugger.run()
    with open(out, "w") as dump:
        debugger.layer_statistics_dump(dump)
    with open(out) as dump:
        return [{"tensor": row["tensor_name"], "op": row["op_name"],
                 "rmse_steps": float(row["mean_squared_error"]) ** 0.5 / float(row["scale"])}
                for row in csv.DictReader(dump)]


def partly_float_model(float_copy, calibration: np.ndarray, tensors: list[str]) -> bytes:
    """The int8 flatbuffer with the layers that output ``tensors`` left in float (the
    debugger's ``denylisted_nodes``: quantize and dequantize ops around them)."""
    from fuselite.train.backend import tf

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=tensors)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=int8_converter(float_copy, calibration, float_fallback=True),
        debug_dataset=lambda: ([picture[np.newaxis].astype(np.float32)] for picture in calibration[:8]),
        debug_options=options)
    return bytes(debugger.get_nondebug_quantized_model())


def measure(run, images: np.ndarray, labels: list[str], int16: bool = False,
            calibration_samples: int = 200, keep_float: tuple[str, ...] = (),
            layer_stats: Path | None = None) -> list[Row]:
    """Every row for ``run`` on ``images`` (uint8 RGB at its input size), float as reference.

    ``keep_float`` adds a row per pattern: int8 with the layers whose output tensor names
    contain it left in float.  ``layer_stats`` (a CSV path) also dumps each quantized
    layer's own error and logs the largest.
    """
    from fuselite.convert.export import _sample
    from fuselite.convert.tflite import convert_image_model, float_input_copy
    from fuselite.convert.variants import get_variant
    from fuselite.convert.weight_grid import round_to_int8_grid
    from fuselite.scoring import Scorer
    from fuselite.train.pipeline import embed_texts

    label_embeddings = embed_texts(run.text_encoder, run.tokenizer, labels).astype(np.float32)
    scorer = Scorer(run.logit_scale, run.logit_bias)

    def score(embeddings):
        return scorer(embeddings, label_embeddings)

    data = run.load_data()
    reference = keras_embeddings(run.image_encoder, images)
    calibration = _sample(data.train.images, calibration_samples, 0)
    rounded = float_input_copy(run.image_encoder)  # the kernels on their int8 grid, as convert rounds them
    round_to_int8_grid(rounded, calibration)

    def bundle_row(variant: str) -> Row:
        log.info("converting the %s image model", variant)
        flatbuffer = convert_image_model(run.image_encoder, get_variant(variant), calibration)
        return _tflite_row(variant, flatbuffer, images, reference, score)

    rows = [compare("int8 output grid", on_output_grid(reference), reference, score), bundle_row("fp16"),
            compare("int8 weights, float activations", keras_embeddings(rounded, images), reference, score),
            bundle_row("int8")]
    if layer_stats is not None or keep_float:
        errors = _logged_layer_errors(rounded, calibration, data.val.images[:64], layer_stats)
        for pattern in keep_float:
            parts = pattern.split(",")
            tensors = [error["tensor"] for error in errors if any(part in error["tensor"] for part in parts)]
            log.info("keeping %d layers matching %r in float", len(tensors), pattern)
            rows.append(_tflite_row(f"int8, {len(tensors)} layers matching {pattern!r} in float",
                                    partly_float_model(rounded, calibration, tensors), images, reference, score))
    if int16:
        log.info("converting the 16x8 image model (slow to run: no optimised int16 kernels)")
        rows.append(_tflite_row("int8 weights, int16 activations", int16_activations_model(rounded, calibration),
                                images, reference, score, normalise=True))
    return rows


def _tflite_row(name: str, flatbuffer: bytes, images: np.ndarray, reference: np.ndarray, score,
                normalise: bool = False) -> Row:
    embeddings, ms = tflite_embeddings(flatbuffer, images, normalise)
    return compare(name, embeddings, reference, score, ms)


def _logged_layer_errors(rounded, calibration: np.ndarray, pictures: np.ndarray, out: Path | None) -> list[dict]:
    """:func:`layer_errors` (into a scratch file unless ``out``), its range and largest logged."""
    with tempfile.TemporaryDirectory() as scratch:
        errors = layer_errors(rounded, calibration, pictures, out or Path(scratch) / "layer-stats.csv")
    worst = sorted(errors, key=lambda error: -error["rmse_steps"])[:3]
    log.info("per-layer error, in steps of each layer's scale: %.2f-%.2f (ideal rounding 0.29); largest: %s",
             min(e["rmse_steps"] for e in errors), max(e["rmse_steps"] for e in errors),
             ", ".join(f"{e['op']} {e['rmse_steps']:.2f} ({e['tensor'][:48]})" for e in worst))
    return errors


def to_markdown(rows: list[Row], pictures: int) -> str:
    """The table for the docs, and the verdict of the int8 row."""
    lines = [("| model | top-1 agreement with float | where float's margin > 0.05 | differ | "
             "embedding cosine median (min) | ms/image, 1 thread |"),
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        ms = f"{row.ms_per_image:.2f}" if row.ms_per_image is not None else ""
        lines.append(f"| {row.name} | {100 * row.agreement:.1f}% | {100 * row.clear_agreement:.1f}% | "
                     f"{row.differing} of {pictures} | {row.cosine_median:.4f} ({row.cosine_min:.4f}) | {ms} |")
    int8 = next((row for row in rows if row.name == "int8"), None)
    if int8 is not None:
        verdict = "met" if int8.agreement >= TARGET else "not met"
        lines += ["", (f"int8 agrees with float on {100 * int8.agreement:.1f}% of pictures; "
                      f"target {100 * TARGET:.0f}%: {verdict}")]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fuselite.bench.suite int8-agreement",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished `fuselite train` run")
    parser.add_argument("--data", type=Path, required=True, help="test manifest (JSON lines) to score on")
    parser.add_argument("--labels", help="comma-separated labels to pick the top one among (default: the run's)")
    parser.add_argument("--int16", action="store_true", help="also the 16x8 model (minutes: reference kernels)")
    parser.add_argument("--keep-float", action="append", default=[], metavar="PATTERN",
                        help="add a row: int8 with the layers whose tensor names contain PATTERN (or any "
                             "of its comma-separated parts) in float; repeatable, e.g. project/MatMul or "
                             "_project_bn,_add/add")
    parser.add_argument("--layer-stats", type=Path, metavar="CSV",
                        help="dump TFLite's per-layer quantization error (64 validation pictures) here")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measures one run and prints the table; 1 when the run or data cannot be read."""
    from fuselite.bench.data import load_eval_data
    from fuselite.errors import UserError
    from fuselite.train.run import load_run

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run = load_run(args.run)
        labels = [text.strip() for text in args.labels.split(",")] if args.labels else list(run.labels)
        images = load_eval_data(args.data, image_size=run.config.image_size).images
    except UserError as exc:
        print(f"error: {exc}")
        return 1
    rows = measure(run, images, labels, int16=args.int16, keep_float=tuple(args.keep_float),
                   layer_stats=args.layer_stats)
    print(to_markdown(rows, len(images)))
    if args.json:
        from fuselite.files import write_atomic

        report = {"run": str(args.run), "data": str(args.data), "labels": labels, "pictures": len(images),
                  "rows": [asdict(row) for row in rows]}
        write_atomic(args.json, json.dumps(report, indent=1).encode())
    return 0
