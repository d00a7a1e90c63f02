"""Measure the sanity checks: their verdict on real music, on a model's clips, on failure cases.

Not a speed benchmark: it prints the table docs/evaluation.md's "Sanity checks" section
reports, through the same code path ``wavenet generate`` uses (shards ->
training examples per label -> :func:`wavenet.generation.verb.calibrate_labels` ->
:func:`wavenet.generation.quality.analyze`)::

    python -m wavenet.bench.sanity [--samples RUN/generate-samples/samples]
                                   [--music /usr/share/scummvm/drascula/audio]

* **Real audio, demo corpus:** the demo corpus (3 genres x 3 tracks) is
  preprocessed with the ``demo`` preset; each track is held out once, the
  checks calibrated on its label's other tracks (as ``wavenet generate``
  calibrates on a training split), and every clip-long window of it checked:
  music the calibration never saw.
* **Real audio, ``--music DIR``:** the same for any folder (e.g. Debian's
  ``drascula-music``; never committed).
* **A model's clips, ``--samples DIR``:** the verdict recorded in
  ``samples.json`` by ``wavenet generate`` (e.g. ``make run``'s), and the
  clips' WAVs checked against each demo label's ranges.
* **Failure cases:** white, pink and brown noise (0.3 RMS), low-passed
  white noise (500 Hz and 2 kHz brick walls), silence and a stuck value
  (code 160, +0.035), each checked against every label's ranges (calibrated
  on all of the label's tracks).
* **Rates:** the false-fail rate (held-out real windows that fail a check)
  per source and the false-pass rate (failure cases that pass every check).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

import numpy as np

CLIP_SECONDS = 2.0  # the demo preset's generate.seconds


def failure_cases(n: int, sample_rate: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic failures, ``n`` samples each, as mu-law codes would carry them."""
    from wavenet.data.audio import mu_law_decode, mu_law_encode

    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    f[0] = f[1]
    spectrum = np.fft.rfft(rng.normal(size=n))

    def coloured(exponent: float) -> np.ndarray:
        x = np.fft.irfft(spectrum / f ** (exponent / 2.0), n)
        return np.clip(0.3 * x / x.std(), -1.0, 1.0)

    def low_passed(cutoff_hz: float) -> np.ndarray:
        # A brick wall: music's band energy and flatness, no harmonic line (issue 20's failure).
        x = np.fft.irfft(np.where(f > cutoff_hz, 0.0, spectrum), n)
        return np.clip(0.3 * x / x.std(), -1.0, 1.0)

    cases = {"white noise": coloured(0.0), "pink noise": coloured(1.0), "brown noise": coloured(2.0),
             "low-passed noise 500 Hz": low_passed(500.0), "low-passed noise 2 kHz": low_passed(2000.0),
             "silence": np.zeros(n), "stuck value": mu_law_decode(np.full(n, 160))}
    return {k: mu_law_decode(mu_law_encode(v)) for k, v in cases.items()}


def _failed(result: dict[str, Any]) -> list[str]:
    """Names of the failed checks: calibrated ones and those that need no data."""
    names = [c["name"] for c in result["checks"] if not c["passed"]]
    return names + [w.split(":")[0] for w in result["warnings"] if w.split(":")[0] not in names]


def _range(check: dict[str, Any]) -> str:
    low = "" if check["low"] is None else f"{check['low']:.3g}"
    return f"{low}..{check['high']:.3g}"


def real_audio(src: str, work: str, name: str, folds: int = 5) -> tuple[dict[str, Any], dict]:
    """Preprocess ``src`` (demo preset); per label, hold out each track once (k-fold over tracks).

    Fold ``i`` of a label holds its tracks ``i, i + k, ...`` (sorted by path,
    ``k = min(folds, tracks)``); the checks are calibrated on the label's
    other tracks exactly as ``wavenet generate`` calibrates on a training
    split (:func:`wavenet.generation.verb.calibrate_labels`), and every clip-long
    window (non-overlapping) of the held-out tracks is checked. A label of
    one track cannot be held out and is left out.

    Returns:
        ``({label: {"tracks", "windows", "passed", "failed": {check: windows}}},
        {label_id: calibration from all the label's tracks} (for the failure cases))``.
    """
    from wavenet.config import preset
    from wavenet.data.audio import mu_law_decode
    from wavenet.data.preprocess import preprocess
    from wavenet.generation.quality import analyze
    from wavenet.generation.verb import calibrate_labels

    cfg = preset("demo")
    sr, q = cfg.audio.sample_rate, cfg.audio.quantization_channels
    dst = os.path.join(work, name)
    manifest = preprocess(src, dst, cfg, progress=False).to_dict()
    n = int(CLIP_SECONDS * sr)
    windows = max(8, round(cfg.generate.reference_seconds * sr / n))
    names = manifest["labels"]
    tracks = sorted(manifest["files"], key=lambda f: f["relpath"])
    codes = {f["sha256"]: np.load(os.path.join(dst, f["codes"])) for f in tracks}
    rows: dict[str, Any] = {}
    for label_id, label in enumerate(names):
        own = [f for f in tracks if f["label_id"] == label_id]
        k = min(folds, len(own))
        if k < 2:
            continue
        row = rows.setdefault(label, {"tracks": len(own), "folds": k, "windows": 0, "passed": 0, "failed": {}})
        for i in range(k):
            held = own[i::k]
            reference = [(codes[f["sha256"]], label_id) for f in own if f not in held]
            cal = calibrate_labels(reference, sr, q, window=n, max_windows=windows, names=names,
                                   wanted=[label_id])[label_id]
            for f in held:
                c = codes[f["sha256"]]
                for j in range(0, len(c) - n + 1, n):
                    r = analyze(mu_law_decode(c[j:j + n], q), sr, codes=c[j:j + n], calibration=cal)
                    failed = _failed(r)
                    row["windows"] += 1
                    row["passed"] += not failed
                    for x in failed:
                        row["failed"][x] = row["failed"].get(x, 0) + 1
    every = calibrate_labels([(codes[f["sha256"]], f["label_id"]) for f in tracks], sr, q, window=n,
                             max_windows=windows, names=names, wanted=list(range(len(names))))
    return rows, every


def rates(out: dict[str, Any]) -> list[str]:
    """False-fail (held-out real windows failing) and false-pass (failure cases passing) rates."""
    lines = []
    for title, rows in out.items():
        if title in ("samples", "failures"):
            continue
        windows = sum(r["windows"] for r in rows.values())
        passed = sum(r["passed"] for r in rows.values())
        if windows:
            lines.append(f"false-fail rate, {title}: {windows - passed}/{windows} held-out real windows "
                         f"fail a check ({(windows - passed) / windows:.1%})")
    verdicts = [bool(failed) for per in out.get("failures", {}).values() for failed in per.values()]
    if verdicts:
        lines.append(f"false-pass rate, failure cases x labels: {verdicts.count(False)}/{len(verdicts)} "
                     f"pass every check ({verdicts.count(False) / len(verdicts):.1%})")
    return lines


def _real_audio_rows(sources: list[tuple[str, str]], work: str, out: dict[str, Any],
                     lines: list[str]) -> dict[str, dict]:
    """Held-out real windows of each source against its own calibration: a row per label
    (``out[title]``, ``lines``). Returns each source's calibrations."""
    all_cals = {}
    for title, src in sources:
        rows, cals = real_audio(src, work, "demo" if title == "demo corpus" else "music")
        all_cals[title] = cals
        out[title] = rows
        for label, r in sorted(rows.items()):
            failed = ", ".join(f"{k} ({v})" for k, v in sorted(r["failed"].items())) or "-"
            lines.append(f"| {title} ({r['tracks']} tracks, {r['folds']} folds) | {label} | {r['windows']} | "
                         f"{r['passed']} ({r['passed'] / r['windows']:.0%}) | {failed} |")
    return all_cals


def _sample_rows(samples_dir: str, all_cals: dict[str, dict], out: dict[str, Any], lines: list[str]) -> None:
    """A model's clips (a `wavenet generate` folder): their verdicts in samples.json, and
    against each demo label's calibration (``out["samples"]``, ``lines``)."""
    import soundfile as sf

    from wavenet.generation.quality import analyze

    summary = json.load(open(os.path.join(samples_dir, "samples.json")))
    demo = {c["label"]: c for k, c in all_cals["demo corpus"].items() if k is not None}
    out["samples"] = []
    lines += ["", "| model clip (label) | verdict in samples.json (value; accepted range) | "
              + " | ".join(f"vs demo {lab}" for lab in demo) + " |", "|---|---|" + "---|" * len(demo)]
    for clip in summary["clips"]:
        failed = [f"{c['name']} {c['value']:.3g} ({_range(c)})" for c in clip["checks"] if not c["passed"]]
        failed += [w.split(":")[0] for w in clip["warnings"]
                   if w.split(":")[0] in ("silence", "white noise", "stuck value", "clipping")]
        audio, sr = sf.read(os.path.join(samples_dir, os.path.basename(clip["wav"])), dtype="float64")
        per_label = {lab: _failed(analyze(audio, sr, calibration=cal)) for lab, cal in demo.items()}
        out["samples"].append({"clip": clip["name"], "label": clip["label"], "reference": clip["reference"],
                               "failed": failed, "per_label": per_label})
        lines.append(f"| {clip['name']} ({clip['label'] or 'unconditioned'}; vs {clip['reference']}) | "
                     f"{'; '.join(failed) or 'none: passes'} | "
                     + " | ".join(", ".join(v) or "**passes**" for v in per_label.values()) + " |")


def _failure_case_rows(all_cals: dict[str, dict], out: dict[str, Any], lines: list[str]) -> None:
    """Each synthetic failure case against every label's calibration (``out["failures"]``, ``lines``)."""
    from wavenet.generation.quality import analyze

    lines += ["", "| failure case | " + " | ".join(f"{t}: {lab}" for t, cals in all_cals.items()
                                              for lab in [c["label"] for k, c in cals.items() if k is not None])
              + " |"]
    lines.append("|---|" + "---|" * sum(k is not None for c in all_cals.values() for k in c))
    sr = 16000
    out["failures"] = {}
    for case, audio in failure_cases(int(CLIP_SECONDS * sr), sr).items():
        cells = []
        for title, cals in all_cals.items():
            for key, cal in cals.items():
                if key is None:
                    continue
                failed = _failed(analyze(audio, sr, calibration=cal))
                out["failures"].setdefault(case, {})[f"{title}: {cal['label']}"] = failed
                cells.append(", ".join(failed) if failed else "**passes**")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wavenet.bench.sanity", description=__doc__.splitlines()[0])
    p.add_argument("--samples", help="a `wavenet generate` output folder (samples.json)")
    p.add_argument("--music", help="a folder of real music (one label per sub-folder)")
    p.add_argument("--json", help="also write every number to this file")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from wavenet.data.demo import make_demo_corpus

    out: dict[str, Any] = {}
    lines = ["| audio | label | windows (2 s) | pass every check | failed checks (windows) |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="wavenet-sanity-") as work:
        make_demo_corpus(os.path.join(work, "demo-src"))
        sources = [("demo corpus", os.path.join(work, "demo-src"))]
        if args.music:
            sources.append((f"music: {args.music}", args.music))
        all_cals = _real_audio_rows(sources, work, out, lines)
        if args.samples:
            _sample_rows(args.samples, all_cals, out, lines)
        _failure_case_rows(all_cals, out, lines)
    lines += ["", *rates(out)]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
