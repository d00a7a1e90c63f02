"""Held-out evaluation (being split into scoring, gating and the verb)."""

from wavenet.evaluate.scoring import *  # noqa: F403 - a step of the split; the next commit names them
from wavenet.evaluate.scoring import TEST_PAUSE_ENV  # noqa: F401
