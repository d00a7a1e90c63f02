import dataclasses

import pytest

from wavenet.config import (
    AUTO_CLASSES,
    PRESETS,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
    load_config,
    preset,
    resolve_auto,
    resolve_config,
)
from wavenet.errors import ConfigError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_yaml(name):
    cfg = preset(name)
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg


def test_bench_preset_is_the_paper_sized_model():
    m = preset("bench").model
    assert m.dilations == tuple(2**i for i in range(10)) * 2
    assert (m.residual_channels, m.gate_channels, m.skip_channels, m.quantization_channels) == (64, 64, 256, 256)
    assert m.receptive_field == 2 * 1023 + 1
    assert preset("bench").audio.sample_rate == 16000


def test_receptive_field_is_derived():
    m = ModelConfig(stacks=3, layers_per_stack=4, kernel_size=3)
    assert m.receptive_field == 2 * 3 * (1 + 2 + 4 + 8) + 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.receptive_field = 5  # type: ignore[misc]


def test_teacher_forced_flops_count_each_layer_on_the_positions_it_runs():
    # Dilations 1, 2 (receptive field 4), one channel each, 2 codes, 4 predicted samples.
    m = ModelConfig(stacks=1, layers_per_stack=2, residual_channels=1, gate_channels=1,
                    skip_channels=1, quantization_channels=2)
    head = 4 * (1 * 1 + 1 * 2)
    first = (4 + 2) * (2 * 1 * 2 + 1) + 4 * 1  # runs on 2 more positions, which the second reads
    last = 4 * (2 * 1 * 2) + 4 * 1  # skip-only: no residual 1x1
    assert m.teacher_forced_flops(4) == 2 * (head + first + last)
    # One position of each layer, as generation runs it, is flops_per_sample.
    assert m.flops_per_sample == 2 * ((2 * 1 * 2 + 1) + 1 + (2 * 1 * 2) + 1 + 1 * 1 + 1 * 2)
    demo = preset("demo").model
    full = demo.flops_per_sample * (demo.receptive_field - 1 + 2048)  # every layer on every input
    assert 1.35 < full / demo.teacher_forced_flops(2048) < 1.5


@pytest.mark.parametrize("kwargs, message", [
    ({"stacks": 0}, "model.stacks must be an integer >= 1. Received: model.stacks=0"),
    ({"kernel_size": 1}, "Received: model.kernel_size=1"),
    ({"quantization_channels": 512}, "Received: model.quantization_channels=512"),
    ({"residual_channels": 8.5}, "Received: model.residual_channels=8.5"),
    ({"num_classes": -1}, "Received: model.num_classes=-1"),
    ({"num_classes": "many"}, "model.num_classes must be an integer >= 0 or 'auto'. "
                              "Received: model.num_classes='many'"),
])
def test_model_validation_names_field_and_value(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        ModelConfig(**kwargs)


def test_train_validation():
    with pytest.raises(ConfigError, match=r"train\.precision must be one of"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match=r"Received: train\.learning_rate=-1"):
        TrainConfig(learning_rate=-1)
    with pytest.raises(ConfigError, match=r"train\.input_noise must be a number in \[0, 256\] "
                                          r"\(code steps\). Received: train\.input_noise=-0.5"):
        TrainConfig(input_noise=-0.5)


def test_generate_weights_precision_is_validated():
    from wavenet.config import GenerateConfig

    assert {GenerateConfig(weights=w).weights for w in ("float32", "bfloat16", "int8")} == {
        "float32", "bfloat16", "int8"}
    with pytest.raises(ConfigError, match=r"generate\.weights must be one of 'float32', 'bfloat16', 'int8'\. "
                                          r"Received: generate\.weights='fp8'"):
        preset("large").with_overrides({"generate.weights": "fp8"})


def test_quantization_channels_must_agree():
    with pytest.raises(ConfigError, match="must equal audio.quantization_channels"):
        ExperimentConfig(model=ModelConfig(quantization_channels=128))


def test_unknown_yaml_field_is_named():
    with pytest.raises(ConfigError, match=r"unknown config field model\.residual_chanels"):
        ExperimentConfig.from_yaml("model:\n  residual_chanels: 3\n")


def test_yaml_file_overrides_preset(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: tiny\ntrain:\n  steps: 7\n  learning_rate: 1e-4\n")
    cfg = load_config(p)
    assert cfg.train.steps == 7 and cfg.train.learning_rate == 1e-4
    assert cfg.model == preset("tiny").model


def test_bad_yaml_file_error_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  steps: -3\n")
    with pytest.raises(ConfigError, match=rf"{p}: train\.steps must be"):
        load_config(p)


def test_overrides_parse_values():
    cfg = resolve_config("tiny", None, ["model.stacks=2", "train.precision=float32", "generate.seconds=1.5"])
    assert cfg.model.stacks == 2 and cfg.generate.seconds == 1.5
    with pytest.raises(ConfigError, match="unknown config field in override. Received: model.nope"):
        resolve_config("tiny", None, ["model.nope=1"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="Received: preset='huge'"):
        preset("huge")


def test_flat_params():
    flat = preset("tiny").flat()
    assert flat["model.stacks"] == 1 and flat["audio.sample_rate"] == 16000
    assert all("." in k or k in ("name", "preset") for k in flat)


def test_num_classes_auto_is_one_class_per_label_from_two_labels_on():
    cfg = preset("tiny").with_overrides({"model.num_classes": "auto"})
    assert cfg.model.num_classes == AUTO_CLASSES and not cfg.model.conditioned
    three = resolve_auto(cfg, ["drums", "organ", "strings"])
    assert three.model.num_classes == 3 and three.model.conditioned
    assert three.train == cfg.train  # only the model's classes change
    # One label (or none) has nothing to tell apart: unconditioned.
    assert resolve_auto(cfg, ["music"]).model.num_classes == 0
    assert resolve_auto(cfg, []).model.num_classes == 0
    # A number the user chose stays, whatever the data.
    assert resolve_auto(tiny_with(num_classes=5), ["a", "b"]).model.num_classes == 5
    assert resolve_auto(tiny_with(num_classes=0), ["a", "b"]).model.num_classes == 0


def test_score_channels_auto_plays_the_score_when_the_data_has_one():
    from wavenet.config import AUTO_SCORE_CHANNELS

    cfg = preset("tiny").with_overrides({"model.score_channels": "auto"})
    assert cfg.model.score_channels == AUTO_CLASSES and not cfg.model.scored
    assert cfg.model.num_params == preset("tiny").model.num_params  # "auto" counts as none
    scored = resolve_auto(cfg, ["a"], scored=True)
    assert scored.model.score_channels == AUTO_SCORE_CHANNELS and scored.model.scored
    assert resolve_auto(cfg, ["a"], scored=False).model.score_channels == 0
    assert resolve_auto(tiny_with(score_channels=8), ["a"], scored=False).model.score_channels == 8
    with pytest.raises(ConfigError, match="model.score_channels must be an integer >= 0 or 'auto'"):
        tiny_with(score_channels="some")


def test_score_lag_is_a_flag_that_only_a_scored_model_uses():
    from tests.test_generate import make_model

    lagged = resolve_auto(tiny_with(score_channels="auto", score_lag=True), ["a"], scored=True).model
    assert lagged.lagged and lagged.num_params == resolve_auto(
        tiny_with(score_channels="auto"), ["a"], scored=True).model.num_params + 2 * 256 * lagged.score_channels
    unscored = resolve_auto(tiny_with(score_channels="auto", score_lag=True), ["a"], scored=False).model
    assert not unscored.lagged  # data without scores: the model it was before
    with_lag = make_model(2, 0, score_channels=4, score_lag=True).count_params()
    assert with_lag == make_model(2, 0, score_channels=4).count_params() + 2 * 256 * 4
    with pytest.raises(ConfigError, match="model.score_lag must be true or false. Received: model.score_lag=1"):
        tiny_with(score_lag=1)


def tiny_with(**model):
    return preset("tiny").with_overrides({f"model.{k}": v for k, v in model.items()})


@pytest.mark.parametrize("name", ["demo", "large"])
def test_the_demo_and_large_presets_are_conditioned_on_their_datas_labels(name):
    assert preset(name).model.num_classes == AUTO_CLASSES
    assert resolve_config(name, overrides=["model.num_classes=auto"]) == preset(name)
    genres = resolve_auto(preset(name), ["drums", "organ", "strings"])
    assert genres.model.num_classes == 3 and genres.model.conditioned
    assert resolve_auto(preset(name), ["audio"]).model.num_classes == 0


def test_a_model_is_never_built_with_num_classes_or_score_channels_still_auto():
    from wavenet.model import build_model

    with pytest.raises(ConfigError, match="model.num_classes is 'auto': resolve it"):
        build_model(preset("demo"))
    with pytest.raises(ConfigError, match="model.score_channels is 'auto': resolve it"):
        build_model(preset("demo").with_overrides({"model.num_classes": 0}))


@pytest.mark.parametrize("value", [1.0, -0.5, "high"])
def test_sustain_is_a_fraction_below_one(value):
    from wavenet.config import GenerateConfig

    with pytest.raises(ConfigError, match=r"generate\.sustain must be a number in \[0, 1\)"):
        GenerateConfig(sustain=value)
    assert GenerateConfig().sustain == 0.0  # plain sampling unless a preset says otherwise
    assert preset("demo").generate.sustain == 0.9
    assert preset("large").generate.sustain == 0.0
