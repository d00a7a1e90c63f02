"""Data: audio files in, a data folder out, and the tf.data input that training reads from it.

The modules, in the order data flows through them:

* :mod:`~wavenet.data.audio`: every pure signal function (mu-law, PCM, resampling, framing, trim);
* :mod:`~wavenet.data.preprocess`: the preprocess verb, files -> mu-law codes, in parallel;
* :mod:`~wavenet.data.shards`: the shard format and the one writer of a data folder (no TensorFlow);
* :mod:`~wavenet.data.manifest`: the data folder's ``manifest.json``, one reader and one writer;
* :mod:`~wavenet.data.labels`: label vocabularies (a folder's label ids mapped to a model's by name);
* :mod:`~wavenet.data.dataset`: the tf.data input pipeline over the shards (the only module here
  that imports TensorFlow);
* :mod:`~wavenet.data.demo`: the small synthesised corpus the demo and the tests use.

Import the modules themselves; this package imports nothing, so preprocessing's worker
processes stay without TensorFlow.
"""
