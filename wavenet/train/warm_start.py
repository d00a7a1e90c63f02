"""Warm start: a new run that begins from another model's weights.

A model may be named by a ``.keras`` path or an MLflow URI. Its architecture
must be the run's, except for the number of label rows of a conditioned
model: label embeddings are copied **by name** (:mod:`wavenet.data.labels`), so a
model whose data gained a genre (a new label, ``model.num_classes`` raised)
or numbers its genres differently still starts from every other weight; a
label the source never saw keeps its freshly initialised rows (the
initialiser a new model gets), which training then learns. MLflow URIs are
resolved once, before any worker starts, into ``RUN_DIR/init_model.keras``,
which every worker (or TFJob pod) opens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from wavenet.config import ExperimentConfig, ModelConfig
from wavenet.data import labels as vocab
from wavenet.data.manifest import read_manifest
from wavenet.edges import registry, storage, tracking
from wavenet.errors import ConfigError
from wavenet.model import WaveNet, load_model, save_model

__all__ = ["INIT_MODEL_FILE", "architecture_fits", "label_rows", "prepare_init_model",
           "champion_init_model", "load_init_weights"]

INIT_MODEL_FILE = "init_model.keras"
EMBEDDING = "condition_embedding"


def architecture_fits(found: ModelConfig, wanted: ModelConfig) -> str | None:
    """None when ``found``'s weights can start a model of ``wanted``, else why not (a phrase).

    Everything must be equal except ``num_classes`` of two conditioned models
    (their label rows are copied by name).
    """
    if found.conditioned != wanted.conditioned:
        return (f"it is {'' if found.conditioned else 'not '}conditioned on labels and this run's "
                f"model is {'' if wanted.conditioned else 'not'}")
    if dataclasses.replace(found, num_classes=0) != dataclasses.replace(wanted, num_classes=0):
        diff = [f"model.{f.name} {getattr(found, f.name)} != {getattr(wanted, f.name)}"
                for f in dataclasses.fields(found)
                if f.name != "num_classes" and getattr(found, f.name) != getattr(wanted, f.name)]
        return f"its model config differs from this run's ({', '.join(diff)})"
    return None


def _check_architecture(source: str, found: ModelConfig, cfg: ExperimentConfig) -> None:
    why = architecture_fits(found, cfg.model)
    if why:
        raise ConfigError(f"cannot warm start from {source}: {why}")


def label_rows(source: WaveNet, data_labels: Sequence[str], who: str) -> tuple[np.ndarray, str]:
    """For each data label id, the source model's row (or :data:`wavenet.data.labels.MISSING`), and a line.

    The line says which labels were copied and which start fresh, e.g.
    ``labels by name: drums, organ copied; extra new (initialised)``.
    """
    rows = vocab.model_ids(data_labels, source.labels, source.config.num_classes, who,
                           allow_missing=True)
    copied = [str(n) for n, r in zip(data_labels, rows.tolist()) if r != vocab.MISSING]
    new = vocab.missing_labels(data_labels, rows)
    how = "by id (it records no label vocabulary)" if source.labels is None else "by name"
    text = f"labels {how}: {', '.join(copied) or 'none'} copied"
    if new:
        text += f"; {', '.join(new)} new (initialised)"
    return rows, text


def prepare_init_model(init_model: str, out: str, cfg: ExperimentConfig,
                       tracking_uri: str | None) -> str:
    """Check a warm-start model and return a ``.keras`` path every worker can read.

    Raises:
        ConfigError: its architecture does not fit ``cfg.model`` (:func:`architecture_fits`).
    """
    source = registry.load_wavenet(init_model, tracking_uri)
    _check_architecture(init_model, source.config, cfg)
    if not registry.is_mlflow_uri(init_model):
        return init_model
    path = storage.join(out, INIT_MODEL_FILE)
    storage.makedirs(out)
    save_model(source, path)
    return path


def champion_init_model(cfg: ExperimentConfig, tracking_uri: str | None,
                        data_dir: str | None = None) -> tuple[str | None, str]:
    """The registered champion's URI when its weights fit ``cfg``'s architecture, and the line saying so.

    The first run of a schedule has no champion, and a changed architecture
    cannot reuse its weights: both train from scratch (URI None) and the line
    says why. With ``data_dir``, the line also says how the data's labels map
    onto the champion's (copied by name, or new). The line is printed too.
    """
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_tracking_server(tracking_uri)
    name = cfg.evaluate.registered_model_name
    champion = registry.get_champion(name, tracking_uri)
    uri = None
    if champion is None:
        text = f"warm start: no champion of {name!r} yet; training from scratch"
    else:
        source = registry.load_wavenet(champion.uri, tracking_uri)
        why = architecture_fits(source.config, cfg.model)
        if why:
            text = (f"warm start: not from champion {name} version {champion.version}: {why}; "
                    "training from scratch")
        else:
            uri = champion.uri
            text = f"warm start: from champion {name} version {champion.version}"
            if cfg.model.conditioned and data_dir:
                text += "; " + label_rows(source, read_manifest(data_dir).labels,
                                          f"champion {champion.uri}")[1]
    print(text, flush=True)
    return uri, text


def load_init_weights(model: WaveNet, init_model: str, cfg: ExperimentConfig,
                      data_labels: Sequence[str] | None = None) -> str:
    """Copy the weights of the ``.keras`` file ``init_model`` into ``model``; returns what it did.

    Label embedding rows go by name from the source's vocabulary to
    ``data_labels`` (the ids this run trains with); rows of labels the source
    never saw keep ``model``'s initial values.
    """
    source = load_model(init_model)
    _check_architecture(init_model, source.config, cfg)
    if not cfg.model.conditioned:
        model.set_weights(source.get_weights())
        return "every weight copied"
    names = list(data_labels) if data_labels is not None else list(
        source.labels if source.labels is not None else map(str, range(source.config.num_classes)))
    rows, text = label_rows(source, names, init_model)
    for dst, src in zip(model.weights, source.weights, strict=True):
        if dst.name != EMBEDDING:
            dst.assign(src.numpy())
            continue
        value, old = dst.numpy(), src.numpy()
        for data_id, row in enumerate(rows.tolist()):
            if row != vocab.MISSING and data_id < value.shape[0]:
                value[data_id] = old[row]
        dst.assign(value)
    return f"every weight copied; {text}"
