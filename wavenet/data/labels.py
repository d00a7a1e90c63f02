"""Label vocabularies: which name each label id of a conditioned model means.

A data folder's manifest keeps its label ids stable (``Manifest.labels``, id =
index), but two folders, or one folder before and after a genre was added,
can give one name different ids. A conditioned model therefore records the
names it was trained on, in id order (``WaveNet.labels``), and every stage
that feeds labels to a model (evaluation, the gate, warm start, generation)
maps the data's ids to the model's **by name** with :func:`model_ids`.

A model saved before models recorded their vocabulary has ``labels`` None
("unknown"): its ids are then assumed to be the data's (id ``i`` is data
label ``i``), and the stages say so. Pure Python and NumPy; no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wavenet.errors import DataError

__all__ = ["MISSING", "check_vocabulary", "model_ids", "missing_labels", "describe"]

# model_ids' entry for a data label the model never saw (with allow_missing).
MISSING = -1


def check_vocabulary(labels: Sequence[str] | None, num_classes: int) -> tuple[str, ...] | None:
    """``labels`` as a tuple, checked against ``num_classes`` (None stays None: unknown).

    Raises:
        ValueError: labels on an unconditioned model, more names than classes,
            a name that is not a non-empty string, or a repeated name.
    """
    if labels is None:
        return None
    labels = tuple(labels)
    if num_classes == 0 and labels:
        raise ValueError(f"an unconditioned model (num_classes=0) has no label vocabulary. "
                         f"Received: labels={list(labels)[:5]}")
    if len(labels) > num_classes:
        raise ValueError(f"a model with num_classes={num_classes} can name at most {num_classes} "
                         f"labels. Received: {len(labels)} labels")
    for name in labels:
        if not isinstance(name, str) or not name:
            raise ValueError(f"label names must be non-empty strings. Received: {name!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"label names must be unique. Received: labels={list(labels)}")
    return labels


def model_ids(data_labels: Sequence[str], model_labels: Sequence[str] | None, num_classes: int,
              who: str, *, allow_missing: bool = False) -> np.ndarray:
    """The model's id for each data label id, matched by name.

    Args:
        data_labels: the data's vocabulary (``Manifest.labels``: index = data id).
        model_labels: the model's vocabulary (index = model id), or None when the
            model records none (ids are then taken to be the data's).
        num_classes: the model's ``num_classes``.
        who: how the model is named in errors (a URI, "champion models:/...").
        allow_missing: give :data:`MISSING` for a data label the model never saw
            instead of raising.

    Returns:
        (len(data_labels),) int32: ``out[data_id] = model_id`` (or MISSING).

    Raises:
        DataError: a data label the model never saw (one line naming the label
            and ``who``), unless ``allow_missing``.
    """
    out = np.full(len(data_labels), MISSING, np.int32)
    if model_labels is None:
        out[:min(len(data_labels), num_classes)] = np.arange(min(len(data_labels), num_classes))
    else:
        index = {name: i for i, name in enumerate(model_labels)}
        for i, name in enumerate(data_labels):
            out[i] = index.get(str(name), MISSING)
    if not allow_missing and (out == MISSING).any():
        first = str(data_labels[int(np.argmax(out == MISSING))])
        if model_labels is None:
            raise DataError(f"data label {first!r} has id {int(np.argmax(out == MISSING))} but {who} "
                            f"is conditioned on {num_classes} labels and records no vocabulary")
        raise DataError(f"data label {first!r} is not one {who} was trained on (its labels: "
                        f"{', '.join(model_labels) or 'none'})")
    return out


def missing_labels(data_labels: Sequence[str], ids: np.ndarray) -> list[str]:
    """The data labels that :func:`model_ids` found no model id for."""
    return [str(data_labels[i]) for i in np.flatnonzero(ids == MISSING).tolist()]


def describe(model_labels: Sequence[str] | None) -> str:
    """``"drums, organ"`` or ``"unknown (saved without a label vocabulary)"``."""
    if model_labels is None:
        return "unknown (saved without a label vocabulary)"
    return ", ".join(model_labels) or "none"
