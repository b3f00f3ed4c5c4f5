"""The probe ``devices verify`` runs twice: natively on the host and on the emulated board.

It reads a bundle with :func:`fuselite.bundle.read_bundle`, runs the image model on
``N`` deterministic frames (numpy's PCG64 generator gives the same pixels on
every architecture) and the text encoder on every label, and writes the raw
outputs as ``.npy`` files (never pickle) plus an ``info.json`` saying which
interpreter ran.  Models are loaded through the runtime's own loader
(:class:`fuselite.runtime.interpreter.TfliteModel`) when the runtime is present.
Where OpenCV is installed too, the same frames (at camera size, BGR) also go
through :class:`fuselite.runtime.Annotator` - resize, quantization, inference,
scoring - so the code a board runs is what gets verified.

Run: ``python -m fuselite.devices.probe --bundle B --out DIR [--frames 8 --seed 0]``.
Imports only numpy and the ground floor (the bundle contract and
:mod:`fuselite.interpreter`), which ``devices verify`` always copies to the board.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from fuselite.bundle import Bundle, read_bundle
from fuselite.interpreter import interpreter_class, interpreter_version, tensor_quantization
from fuselite.maps import split_outputs

IMAGE_OUTPUT = "image_embeddings.npy"
TEXT_OUTPUT = "text_embeddings.npy"
ANNOTATOR_INPUTS = "annotator_inputs.npy"
ANNOTATOR_SCORES = "annotator_scores.npy"
CAMERA_SIZE = (120, 160)  # frames for the Annotator are resized like a camera's
INFO = "info.json"


class _DirectModel:
    """The fallback loader when ``fuselite.runtime`` is not importable."""

    def __init__(self, model_bytes: bytes, num_threads: int, name: str):
        self.name = name
        self._interpreter = interpreter_class()(model_content=model_bytes, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = split_outputs(self._interpreter.get_output_details())[0]  # the embedding
        self.input_dtype = np.dtype(self._input["dtype"])
        self.input_quant = tensor_quantization(self._input)

    def run(self, model_input: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], model_input)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])


def load_model(model_bytes: bytes, num_threads: int, name: str):
    """Loads a model through the runtime's loader if present; returns (model, code path)."""
    try:
        from fuselite.runtime.interpreter import TfliteModel
    except ImportError:
        return _DirectModel(model_bytes, num_threads, name), "interpreter (fuselite.runtime absent)"
    model = TfliteModel(model_bytes, num_threads=num_threads, name=name)
    model.input_dtype = model.input.dtype
    model.input_quant = model.input.quantization
    return model, "fuselite.runtime.interpreter.TfliteModel"


def frames(count: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``count`` RGB uint8 frames of ``size`` (height, width), identical on every machine."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size[0], size[1], 3), dtype=np.uint8)


def model_input(frame: np.ndarray, dtype: np.dtype, quant: tuple[float, int] | None) -> np.ndarray:
    """Turns a uint8 frame into the image model's input (pixel values 0-255, as the manifest says)."""
    pixels = frame[None].astype(np.float32)
    if quant is not None and np.issubdtype(dtype, np.integer):
        scale, zero_point = quant
        info = np.iinfo(dtype)
        return np.clip(np.round(pixels / scale + zero_point), info.min, info.max).astype(dtype)
    return pixels.astype(dtype)


def label_embeddings_on_board(bundle: Bundle, num_threads: int) -> np.ndarray:
    """The default labels' embeddings as the board computes them.

    With the bundle's text encoder; a zero-shot bundle resolves them in its concept
    index instead (no model runs).
    """
    if bundle.concepts is not None:
        return bundle.concepts.label_matrix(bundle.manifest.labels)
    if not bundle.text_encoder_bytes:  # a fixed-labels bundle: its embeddings are all the board has
        return bundle.label_embeddings
    text_model, _ = load_model(bundle.text_encoder_bytes, num_threads, "text encoder")
    return np.stack([
        text_model.run(np.asarray([bundle.tokenizer.encode(label)], dtype=text_model.input_dtype))[0]
        for label in bundle.manifest.labels
    ])


def run_probe(bundle: Bundle, count: int, seed: int, num_threads: int) -> tuple[dict, dict]:
    """Runs both models; returns ({output file: array}, info)."""
    image_model, code_path = load_model(bundle.model_bytes, num_threads, "image model")
    size = bundle.manifest.preprocessing.input_size
    image = [
        image_model.run(model_input(f, image_model.input_dtype, image_model.input_quant))[0]
        for f in frames(count, size, seed)
    ]
    outputs = {IMAGE_OUTPUT: np.stack(image), TEXT_OUTPUT: label_embeddings_on_board(bundle, num_threads)}
    annotated = run_annotator(bundle.path, count, seed, num_threads)
    if annotated:
        outputs.update(annotated)
        code_path += " + fuselite.runtime.Annotator"
    info = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "interpreter": interpreter_version(),
        "code_path": code_path,
        "frames": count,
        "seed": seed,
    }
    return outputs, info


def run_annotator(bundle_path: Path, count: int, seed: int, num_threads: int) -> dict:
    """Model inputs and label scores from the runtime's Annotator; empty without OpenCV."""
    try:
        from fuselite.runtime.annotator import Annotator
        from fuselite.runtime.options import AnnotatorOptions
    except ImportError:  # no OpenCV (armv7 under emulation) or an older runtime
        return {}
    inputs, scores = [], []
    with Annotator.create(AnnotatorOptions(bundle_path, num_threads=num_threads)) as annotator:
        for index, frame in enumerate(frames(count, CAMERA_SIZE, seed + 1)):
            inputs.append(annotator.preprocess(frame))
            result = annotator.annotate_preprocessed(inputs[-1], timestamp_ms=100.0 * index)
            scores.append([result.scores[label] for label in annotator.labels if label in result.scores])
    return {ANNOTATOR_INPUTS: np.concatenate(inputs), ANNOTATOR_SCORES: np.asarray(scores, np.float64)}


def main(argv: list[str] | None = None) -> int:
    """Entry point: writes the outputs and info.json into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    outputs, info = run_probe(read_bundle(args.bundle), args.frames, args.seed, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, array in outputs.items():
        np.save(args.out / name, array, allow_pickle=False)
    (args.out / INFO).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
