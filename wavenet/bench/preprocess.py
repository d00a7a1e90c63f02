"""Preprocessing throughput: seconds of input audio per wall-clock second.

Input: demo-corpus music synthesised at 44.1 kHz stereo and encoded as OGG
Vorbis (the usual format of a downloaded music collection, and the slowest
common format to decode). The whole `preprocess` run is timed (listing,
decode, resample, trim, mu-law, writing shards and the manifest; process
pool start-up included) with 1 process (no pool) and with 2, each into a
fresh output folder. Decoding alone is timed as well, to show where the time
goes, and CPU seconds (this process plus its workers) are reported next
to wall seconds, because on a shared machine wall time includes waiting
for a core.

Targets: >= 250x real time with one process; 2 processes >= 1.7x one.

Peak memory: a real ``wavenet preprocess`` process (one file, no pool) on a
long many-channel high-rate FLAC (90 s, 8 channels, 192 kHz; 10 s with
``quick``) against the same on a 3 s file of the same format, each the
process's own peak (VmHWM), whatever this process holds. Decoding and
encoding in blocks keep the ratio near 1: memory follows the output at
``audio.sample_rate``, not what the file holds.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

from wavenet.bench import machine
from wavenet.config import ExperimentConfig
from wavenet.data.demo import GENRES, synthesize
from wavenet.data.preprocess import preprocess

SAMPLE_RATE = 44100


def make_input(folder: str, files: int, seconds: float) -> float:
    """Write ``files`` distinct stereo OGG Vorbis tracks; return the total seconds of audio."""
    total = 0.0
    for i in range(files):
        genre = GENRES[i % len(GENRES)]
        left = synthesize(genre, seconds, seed=100 + i, track=i, sample_rate=SAMPLE_RATE)
        # A cheap, different right channel: a 10 ms echo mixed in.
        right = 0.8 * left + 0.2 * np.roll(left, SAMPLE_RATE // 100)
        path = os.path.join(folder, genre, f"{genre}-{i:03d}.ogg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stereo = np.stack([left, right], axis=1)
        # Vorbis is written one second at a time: libvorbis overflows its stack
        # when libsndfile hands it a long buffer in one call
        # (libsndfile/libsndfile#1095, bastibe/python-soundfile#426).
        with sf.SoundFile(path, "w", SAMPLE_RATE, 2, format="OGG", subtype="VORBIS") as f:
            for start in range(0, stereo.shape[0], SAMPLE_RATE):
                f.write(stereo[start:start + SAMPLE_RATE])
        total += left.size / SAMPLE_RATE
    return total


def write_multichannel_flac(path: str, seconds: float, channels: int = 8,
                            sample_rate: int = 192000) -> None:
    """A FLAC of ``channels`` detuned tones with a little noise, written one second at a time.

    Written in blocks so that making a long file does not itself take the
    memory that reading it all at once would.
    """
    rng = np.random.default_rng(0)
    freqs = 220.0 * (1.0 + 0.05 * np.arange(channels))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with sf.SoundFile(path, "w", sample_rate, channels, format="FLAC", subtype="PCM_16") as f:
        total = int(round(seconds * sample_rate))
        for start in range(0, total, sample_rate):
            t = np.arange(start, min(total, start + sample_rate)) / sample_rate
            block = 0.4 * np.sin(2 * np.pi * freqs[None, :] * t[:, None])
            f.write(block + 0.01 * rng.standard_normal(block.shape))


# `wavenet preprocess` as ``python -m wavenet.cli`` runs it (the same ``main``), then the
# process's own peak (VmHWM) written to the descriptor named by its first argument.
_MEASURED_CLI = """
import os, sys
from wavenet.cli import main
from wavenet.memory import peak_rss_bytes
code = 1
try:
    code = main(sys.argv[2:])
finally:
    os.write(int(sys.argv[1]), str(peak_rss_bytes()).encode())
sys.exit(code)
"""


def preprocess_peak_rss_mb(src: str, dst: str, cfg: ExperimentConfig) -> float:
    """Peak resident memory (MiB) of one ``wavenet preprocess SRC DST`` process without a pool.

    The process reports its own peak, ``/proc/self/status``'s VmHWM
    (:func:`wavenet.memory.peak_rss_bytes`), as it exits, so the figure does not
    depend on the caller. The child's ``ru_maxrss`` (``os.wait4``, as this
    function read it before) does: Python starts it with vfork and exec, and
    Linux keeps in ``ru_maxrss`` the high-water mark of the image exec replaced,
    the caller's; from a pytest holding 2 GB a 3 s file's preprocess read
    2,006 MB.
    """
    argv = ["preprocess", src, dst, "--processes", "1", "--no-progress", "--config-yaml", cfg.to_yaml()]
    read, write = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", _MEASURED_CLI, str(write), *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(write,))
        os.close(write)
        write = -1
        _, err = proc.communicate()
        peak = os.read(read, 64)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    if proc.returncode != 0 or not peak:
        raise RuntimeError(f"wavenet preprocess exited {proc.returncode}: "
                           f"{err.decode(errors='replace').strip()[-500:]}")
    return int(peak) / (1 << 20)


def memory(cfg: ExperimentConfig, root: str, long_seconds: float = 90.0) -> dict:
    """Peak RSS of preprocessing a 3 s and a ``long_seconds`` 8-channel 192 kHz FLAC."""
    out = {}
    for name, seconds in (("short", 3.0), ("long", long_seconds)):
        src = os.path.join(root, f"mem-{name}", "src")
        write_multichannel_flac(os.path.join(src, "g", f"{name}.flac"), seconds)
        out[f"peak_rss_mb_{name}"] = round(
            preprocess_peak_rss_mb(src, os.path.join(root, f"mem-{name}", "dst"), cfg), 1)
    return {"memory_input": f"{long_seconds:g} s vs 3 s, 8 channels, 192 kHz FLAC",
            **out, "peak_rss_ratio": round(out["peak_rss_mb_long"] / out["peak_rss_mb_short"], 3)}


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _decode_seconds(folder: str) -> float:
    start = time.perf_counter()
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.ogg"))):
        sf.read(path, dtype="float32", always_2d=True)
    return time.perf_counter() - start


def _best_times(src: str, root: str, cfg: ExperimentConfig, repeats: int):
    """``(wall, cpu)`` seconds of ``preprocess`` with 1 and 2 processes (the best of
    ``repeats`` each, by wall time), and the last run's manifest."""
    walls: dict[int, float] = {}
    cpus: dict[int, float] = {}
    manifest = None
    for procs in (1, 2):
        best = (float("inf"), 0.0)
        for r in range(repeats):
            dst = os.path.join(root, f"out-{procs}-{r}")
            cpu0 = _cpu_seconds()
            start = time.perf_counter()
            manifest = preprocess(src, dst, cfg, processes=procs, progress=False)
            best = min(best, (time.perf_counter() - start, _cpu_seconds() - cpu0))
            shutil.rmtree(dst)
        walls[procs], cpus[procs] = best
    return walls, cpus, manifest


def run(cfg: ExperimentConfig, quick: bool = False) -> dict:
    """Time ``preprocess`` on synthesised 44.1 kHz stereo OGG Vorbis music.

    Args:
        cfg: the experiment config (audio and data sections are used).
        quick: a few seconds of audio (smoke test) instead of 16 minutes.

    Returns:
        ``realtime_factor_1proc`` / ``_2proc`` (input seconds per wall second),
        ``speedup_2proc``, ``decode_realtime_factor``, input size, and ``machine``.
    """
    files, seconds = (2, 3.0) if quick else (16, 60.0)
    repeats = 1 if quick else 2
    root = tempfile.mkdtemp(prefix="wavenet-bench-preprocess-")
    try:
        src = os.path.join(root, "src")
        t0 = time.perf_counter()
        input_seconds = make_input(src, files, seconds)
        synth_s = time.perf_counter() - t0
        decode_s = _decode_seconds(src)
        walls, cpus, manifest = _best_times(src, root, cfg, repeats)
        assert manifest is not None and manifest.summary.processed == files
        rtf1, rtf2 = input_seconds / walls[1], input_seconds / walls[2]
        return {
            "benchmark": "preprocess",
            "quick": quick,
            "input": f"{files} x {seconds:g} s, {SAMPLE_RATE} Hz stereo OGG Vorbis",
            "files": files,
            "input_seconds": round(input_seconds, 3),
            "output_sample_rate": cfg.audio.sample_rate,
            "realtime_factor_1proc": round(rtf1, 1),
            "realtime_factor_2proc": round(rtf2, 1),
            "speedup_2proc": round(rtf2 / rtf1, 3),
            "wall_seconds_1proc": round(walls[1], 3),
            "wall_seconds_2proc": round(walls[2], 3),
            # CPU seconds of this process and its workers: on a shared machine
            # wall time includes waiting for a core; this does not.
            "cpu_seconds_1proc": round(cpus[1], 3),
            "cpu_seconds_2proc": round(cpus[2], 3),
            "realtime_factor_per_cpu_second": round(input_seconds / cpus[1], 1),
            # Share of the 2-process CPU time that 1 process also needs: the rest is
            # pool start-up and coordination.
            "cpu_efficiency_2proc": round(cpus[1] / cpus[2], 3),
            # The serial tail (codes -> shards -> manifest) of the last run.
            "merge_seconds": manifest.summary.merge_seconds,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "decode_realtime_factor": round(input_seconds / decode_s, 1),
            "synthesis_seconds": round(synth_s, 2),
            "repeats": repeats,
            "target_realtime_factor_1proc": 250.0,
            "target_speedup_2proc": 1.7,
            **memory(cfg, root, long_seconds=10.0 if quick else 90.0),
            "machine": machine(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
