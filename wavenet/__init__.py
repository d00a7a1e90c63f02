"""wavenet: a Keras 3 WaveNet for music, with fast generation.

Import submodules directly (``from wavenet import model``); this package
imports nothing heavy at import time so the CLI starts fast.
"""

__version__ = "0.1.0"
