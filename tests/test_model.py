import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from wavenet.config import preset
from wavenet.errors import WavenetError
from wavenet.model import ResidualBlock, WaveNet, bits_per_sample, build_model, load_model, save_model


def tiny(num_classes=0):
    cfg = preset("tiny")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))


def numpy_block(block, x, label=None):
    """Plain NumPy reference of one residual block on one sequence (T, R)."""
    w = {v.name: v.numpy() for v in block.weights}
    k, d, g = block.kernel_size, block.dilation, block.gate_channels
    T = x.shape[0]
    z = np.tile(w["filter_gate_bias"], (T, 1))
    for t in range(T):
        for j in range(k):
            src = t - (k - 1 - j) * d
            if src >= 0:
                z[t] += x[src] @ w["filter_gate_kernel"][j]
    if label is not None:
        z += w["condition_embedding"][label]
    h = np.tanh(z[:, :g]) / (1 + np.exp(-z[:, g:]))
    return x + h @ w["residual_kernel"] + w["residual_bias"], h @ w["skip_kernel"] + w["skip_bias"]


@pytest.mark.parametrize("kernel_size, num_classes", [(2, 0), (3, 4)])
def test_residual_block_matches_numpy_reference(kernel_size, num_classes):
    block = ResidualBlock(4, 6, 5, 7, kernel_size=kernel_size, num_classes=num_classes)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 40, 6)).astype("float32")
    labels = np.array([1, 3]) if num_classes else None
    res, skip = block(x, labels)
    for b in range(2):
        ref_res, ref_skip = numpy_block(block, x[b], None if labels is None else labels[b])
        np.testing.assert_allclose(res[b], ref_res, atol=1e-5)
        np.testing.assert_allclose(skip[b], ref_skip, atol=1e-5)


def test_residual_block_validates_arguments():
    with pytest.raises(ValueError, match=r"`dilation` must be an integer >= 1. Received: dilation=0"):
        ResidualBlock(0, 4, 4, 4)
    block = ResidualBlock(1, 4, 4, 4, num_classes=2)
    with pytest.raises(ValueError, match="`labels` is required"):
        block(np.zeros((1, 3, 4), "float32"))


def test_causality():
    model = build_model(tiny())
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (1, 64))
    base = model(x).numpy()
    for t in (10, 30, 63):
        y = x.copy()
        y[0, t + 1:] = rng.integers(0, 256, 63 - t)
        out = model(y).numpy()
        np.testing.assert_array_equal(out[0, :t + 1], base[0, :t + 1])


@pytest.mark.parametrize("cfg", [tiny(), dataclasses.replace(
    tiny(), model=dataclasses.replace(tiny().model, stacks=2, layers_per_stack=3, kernel_size=3))])
def test_receptive_field_is_exact(cfg):
    model = build_model(cfg)
    rf = cfg.model.receptive_field
    T = rf + 20
    t = T - 1
    x = np.full((1, T), 128)
    base = model(x).numpy()[0, t]
    far = x.copy()
    far[0, t - rf] = 3  # rf samples back: outside the receptive field
    np.testing.assert_array_equal(model(far).numpy()[0, t], base)
    near = x.copy()
    near[0, t - rf + 1] = 3  # one sample closer: inside
    # A single path reaches that far, so the effect is small but never exactly zero.
    assert np.any(model(near).numpy()[0, t] != base)


KERNEL3 = dataclasses.replace(tiny(), model=dataclasses.replace(
    tiny().model, stacks=2, layers_per_stack=3, kernel_size=3, num_classes=2))


@pytest.mark.parametrize("cfg", [tiny(), KERNEL3], ids=["tiny", "kernel3-conditioned"])
def test_logits_from_equals_the_full_forward_slice_and_its_gradients(cfg):
    """The valid-convolution path that teacher forcing uses gives the full forward's values
    and gradients for every position it returns; before a full receptive field it falls back."""
    model = build_model(cfg)
    rf = cfg.model.receptive_field
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (2, rf + 25))
    inputs = {"codes": x, "labels": np.array([0, 1])} if cfg.model.conditioned else x
    full = model(inputs).numpy()
    for first in (0, rf - 2, rf - 1, rf + 3):
        got = model.logits_from(inputs, first).numpy()
        assert got.shape == full[:, first:].shape
        np.testing.assert_allclose(got, full[:, first:], atol=2e-5)

    def grads(fn):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.nn.log_softmax(fn())[..., 5])
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

    for a, b in zip(grads(lambda: model.logits_from(inputs, rf - 1)),
                    grads(lambda: model(inputs)[:, rf - 1:])):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    if cfg.model.conditioned:
        with pytest.raises(ValueError, match="conditioned on labels"):
            model.logits_from(x, rf - 1)


def test_conditioning_changes_output_and_is_required():
    model = build_model(tiny(num_classes=3))
    x = np.random.default_rng(2).integers(0, 256, (2, 32))
    a = model({"codes": x, "labels": np.array([0, 0])}).numpy()
    b = model({"codes": x, "labels": np.array([0, 2])}).numpy()
    np.testing.assert_array_equal(a[0], b[0])
    assert np.max(np.abs(a[1] - b[1])) > 1e-6
    with pytest.raises(ValueError, match="conditioned on labels"):
        model(x)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_save_load_round_trip(tmp_path, num_classes):
    cfg = tiny(num_classes)
    model = build_model(cfg)
    x = np.random.default_rng(3).integers(0, 256, (2, 50))
    inputs = {"codes": x, "labels": np.array([1, 2])} if num_classes else x
    path = str(tmp_path / "m.keras")
    save_model(model, path)
    loaded = load_model(path)
    assert isinstance(loaded, WaveNet)
    assert loaded.config == cfg.model and loaded.audio_config == cfg.audio
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(WavenetError, match="model file not found"):
        load_model(str(tmp_path / "missing.keras"))
    bad = tmp_path / "bad.keras"
    bad.write_text("not a zip")
    with pytest.raises(WavenetError, match=f"not a valid .keras file: {bad}: "):
        load_model(str(bad))


def test_untrained_loss_is_about_eight_bits():
    model = build_model(tiny())
    crop = np.random.default_rng(4).integers(0, 256, (4, tiny().crop_length))
    bits = bits_per_sample(model, crop).numpy()
    assert bits.shape == (4,)
    assert np.all(np.abs(bits - 8.0) < 0.3)


def test_read_codes_replace_the_inputs_and_the_targets_stay_the_crops():
    cfg = tiny()
    model = build_model(cfg)
    rf = cfg.model.receptive_field
    rng = np.random.default_rng(8)
    crop = rng.integers(0, 256, (2, cfg.crop_length))
    read = np.clip(crop + rng.integers(-3, 4, crop.shape), 0, 255)
    np.testing.assert_allclose(bits_per_sample(model, crop, read=crop), bits_per_sample(model, crop))
    logits = model(read[:, :-1]).numpy()[:, rf - 1:]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, crop[:, rf:, None], -1)[..., 0].mean(-1) / np.log(2)
    np.testing.assert_allclose(bits_per_sample(model, crop, read=read), expected, rtol=1e-5)
    assert np.all(np.abs(expected - bits_per_sample(model, crop).numpy()) > 1e-5)  # untrained: ~8 bits


@pytest.mark.training
def test_targets_are_shifted_inputs():
    """A periodic signal whose next code is fully determined: the loss must go near zero.

    If targets were the inputs themselves (the reference project's bug) the net
    would learn the identity instead; this checks the shift.
    """
    cfg = tiny()
    model = build_model(cfg)
    opt = keras.optimizers.Adam(1e-2)
    period = np.array([10, 200, 60, 130, 90, 250, 30])
    rng = np.random.default_rng(5)

    def batch():
        starts = rng.integers(0, len(period), 8)
        idx = starts[:, None] + np.arange(cfg.crop_length)[None, :]
        return period[idx % len(period)]

    @tf.function
    def step(crop):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(bits_per_sample(model, crop, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    first = float(step(batch()))
    for _ in range(60):
        last = float(step(batch()))
    assert first > 7.0
    assert last < 0.5, f"loss {first:.2f} -> {last:.2f} bits"


def test_every_weight_gets_a_gradient_and_the_last_block_is_skip_only():
    """No dead weights: the last block's residual output would feed nothing, so it has none."""
    cfg = tiny(num_classes=2)
    model = build_model(cfg)
    assert [b.skip_only for b in model.blocks] == [False] * (len(model.blocks) - 1) + [True]
    last = {v.name for v in model.blocks[-1].weights}
    assert "residual_kernel" not in last and "skip_kernel" in last
    crop = np.random.default_rng(6).integers(0, 256, (2, cfg.crop_length))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(bits_per_sample(model, crop, np.array([0, 1])))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads), [v.path for v, g in zip(model.trainable_variables, grads)
                                               if g is None]
    with pytest.raises(ValueError, match="Received: skip_only=1"):
        ResidualBlock(1, 4, 4, 4, skip_only=1)


def _with_config(src, dst, replace: dict[str, str]) -> None:
    """Copy the ``.keras`` archive ``src`` to ``dst`` with strings of its config.json replaced."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "config.json":
                text = data.decode()
                for old, new in replace.items():
                    assert old in text
                    text = text.replace(old, new)
                data = text.encode()
            zout.writestr(item, data)


def test_a_saved_model_loads_by_its_registered_name_wherever_the_module_moved(tmp_path):
    """A ``.keras`` file records the module its class came from, and Keras finds a custom class by
    its registered name (``package="wavenet"``), not by that module (keras/src/saving/
    serialization_lib.py ``_retrieve_class_or_fn`` looks the registered name up first): models
    saved before a module moves (wavenet/ was regrouped into packages) still load. The registered
    names are the stored contract; this pins them."""
    model = build_model(tiny(3))
    x = {"codes": np.random.default_rng(4).integers(0, 256, (2, 40)), "labels": np.array([0, 2])}
    saved = str(tmp_path / "m.keras")
    save_model(model, saved)
    moved = str(tmp_path / "moved.keras")
    _with_config(saved, moved, {'"module": "wavenet.model"': '"module": "wavenet.somewhere_else"'})
    np.testing.assert_array_equal(load_model(moved)(x).numpy(), model(x).numpy())
    # and the registered name is what it reads: an unknown one does not load
    renamed = str(tmp_path / "renamed.keras")
    _with_config(saved, renamed, {'"registered_name": "wavenet>WaveNet"': '"registered_name": "wavenet>Gone"'})
    with pytest.raises(WavenetError):
        load_model(renamed)
