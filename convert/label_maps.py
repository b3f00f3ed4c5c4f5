"""A pooled image tower with its class activation map as a second output.

A global tower ends ``features -> pool (average) -> project (dense) -> embedding
(unit length)``.  The projection is linear and the pool an average, so the
projection applied to each cell of the feature map, ``u_c = W f_c + b``, averages to
the pooled projection: it is the tower's class activation map, one matrix product on
the cells the backbone already computed.  The converted model outputs the embedding
``[1, D]`` and that map ``[1, cells, D]``; the board scores each cell against a label
(:func:`fuselite.maps.cam_cells`).  A regional tower needs none of this: its cells
are its output.
"""

from __future__ import annotations

import logging

from fuselite.train.backend import keras

log = logging.getLogger(__name__)

POOL, PROJECT, EMBEDDING = "pool", "project", "embedding"
MAP_OUTPUT = "label_map"


def map_grid(encoder) -> tuple[int, int] | None:
    """``(rows, cols)`` of the class activation map :func:`with_label_map` adds, or None.

    None when the tower has no pooling-then-linear head to project per cell: a regional
    tower (its output is already per cell), the tiny tower's ``avgmax`` pooling (the
    maximum is not linear), or a tower whose head layers are wrapped (quantization-aware
    training renames them).
    """
    head = _head(encoder)
    if head is None:
        return None
    features = head[0].get_input_at(0)
    return int(features.shape[1]), int(features.shape[2])


def _head(encoder):
    """``(pool, project)`` layers of a pooling-then-linear head, or None."""
    if len(encoder.output_shape) != 2:
        return None
    try:
        pool, project = encoder.get_layer(POOL), encoder.get_layer(PROJECT)
    except ValueError:
        return None
    if not isinstance(pool, keras.layers.GlobalAveragePooling2D) or not isinstance(
        project, keras.layers.Dense
    ):
        return None
    # The first node is the tower's own (later ones are maps made here); with avgmax the
    # average and the maximum are concatenated before the projection.
    if project.get_input_at(0) is not pool.get_output_at(0):
        return None
    return pool, project


def with_label_map(encoder) -> tuple[object, tuple[int, int]] | None:
    """``(a two-output model sharing encoder's layers, the map's (rows, cols))``, or None
    when :func:`map_grid` finds no head to project per cell."""
    grid = map_grid(encoder)
    if grid is None:
        return None
    pool, project = _head(encoder)
    rows, cols = grid
    cells = project(pool.get_input_at(0))  # Dense acts on the last axis: one projection per cell
    cells = keras.layers.Reshape((rows * cols, int(project.units)), name=MAP_OUTPUT)(cells)
    model = keras.Model(encoder.inputs, [encoder.output, cells], name=f"{encoder.name}_with_map")
    return model, (rows, cols)
