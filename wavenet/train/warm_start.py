"""Warm start: a new run that begins from another model's weights.

A model may be named by a ``.keras`` path or an MLflow URI; its architecture
must equal the run's. MLflow URIs are resolved once, before any worker starts,
into ``RUN_DIR/init_model.keras``, which every worker (or TFJob pod) opens.
"""

from __future__ import annotations

from wavenet import registry, storage, tracking
from wavenet.config import ExperimentConfig, ModelConfig
from wavenet.errors import ConfigError
from wavenet.model import WaveNet, load_model, save_model

__all__ = ["INIT_MODEL_FILE", "prepare_init_model", "champion_init_model", "load_init_weights"]

INIT_MODEL_FILE = "init_model.keras"


def _check_architecture(source: str, found: ModelConfig, cfg: ExperimentConfig) -> None:
    if found != cfg.model:
        raise ConfigError(f"cannot warm start from {source}: its model config differs from this "
                          f"run's. Received: {found}, expected: {cfg.model}")


def prepare_init_model(init_model: str, out: str, cfg: ExperimentConfig,
                       tracking_uri: str | None) -> str:
    """Check a warm-start model and return a ``.keras`` path every worker can read.

    Raises:
        ConfigError: its architecture is not ``cfg.model``.
    """
    source = registry.load_wavenet(init_model, tracking_uri)
    _check_architecture(init_model, source.config, cfg)
    if not registry.is_mlflow_uri(init_model):
        return init_model
    path = storage.join(out, INIT_MODEL_FILE)
    storage.makedirs(out)
    save_model(source, path)
    return path


def champion_init_model(cfg: ExperimentConfig, tracking_uri: str | None) -> str | None:
    """The registered champion's URI when it has ``cfg``'s architecture, else None (and why).

    The first run of a schedule has no champion, and a changed architecture
    cannot reuse its weights: both train from scratch and say so.
    """
    tracking.use_tracking_uri(tracking_uri)
    name = cfg.evaluate.registered_model_name
    champion = registry.get_champion(name)
    if champion is None:
        print(f"warm start: no champion of {name!r} yet; training from scratch")
        return None
    if registry.load_wavenet(champion.uri).config != cfg.model:
        print(f"warm start: champion {champion.uri} has another architecture; training from scratch")
        return None
    return champion.uri


def load_init_weights(model: WaveNet, init_model: str, cfg: ExperimentConfig) -> None:
    """Copy the weights of the ``.keras`` file ``init_model`` into ``model``."""
    source = load_model(init_model)
    _check_architecture(init_model, source.config, cfg)
    model.set_weights(source.get_weights())
