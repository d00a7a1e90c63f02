"""Generation: music from a trained model, checked and shown in a listening report.

The modules, in the order ``wavenet generate`` uses them:

* :mod:`~wavenet.generation.verb`: :func:`~wavenet.generation.verb.generate_samples`, the
  generate verb: clips, WAVs, spectrograms, ``samples.json`` and the report, logged to MLflow;
* :mod:`~wavenet.generation.fast`: the cached generator
  (:class:`~wavenet.generation.fast.FastGenerator`, O(layers) per sample) over the C step kernel
  ``wavenet.generation._fastgen``;
* :mod:`~wavenet.generation.quality`: sanity checks of generated audio (cheap numbers that
  catch a broken model), calibrated on real audio;
* :mod:`~wavenet.generation.report`: spectrogram images and the self-contained HTML report.

The served model's generator, :mod:`wavenet.serving`, stays outside this package on purpose:
every model logged to MLflow names ``wavenet.serving`` as its ``loader_module`` in its MLmodel
file, so that name must keep working for models logged before this package existed.

Import the modules themselves; this package imports nothing (TensorFlow loads with
:mod:`~wavenet.generation.fast` or :mod:`~wavenet.generation.verb`, not with the package).
"""
