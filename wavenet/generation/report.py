"""Spectrogram images and the self-contained HTML listening report.

The report is one HTML file with everything inside it (audio players and
spectrograms as base64 ``data:`` URIs), so it plays from an MLflow artifact
view, an e-mail attachment or a bucket without the files next to it; each clip
also links its WAV and PNG by relative file name for downloading.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import soundfile as sf

# The Figure/Agg canvas pair avoids pyplot's global state and any GUI backend.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wavenet.data.audio import float_to_pcm16, power_spectrogram
from wavenet.decision import gate_line, verdict

__all__ = ["wav_bytes", "spectrogram_png", "gate_section", "scores_section", "reference_block",
           "checks_table", "render_html"]


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV file contents of float audio in [-1, 1]."""
    buf = io.BytesIO()
    sf.write(buf, float_to_pcm16(audio), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def spectrogram_png(audio: np.ndarray, sample_rate: int, title: str = "",
                    n_fft: int = 512, hop: int = 128, dynamic_range_db: float = 80.0) -> bytes:
    """A log-power spectrogram of one clip as PNG bytes (matplotlib, Agg backend).

    Args:
        audio: (T,) float audio.
        sample_rate: Hz (sets the time and frequency axes).
        title: drawn above the image.
        n_fft: FFT size; hop: samples between frames.
        dynamic_range_db: colours span this many dB below the loudest bin.

    Returns:
        PNG file contents.
    """
    power = power_spectrogram(audio, n_fft, hop)  # (frames, bins)
    db = 10.0 * np.log10(np.maximum(power, 1e-12))
    top = float(db.max())
    fig = Figure(figsize=(7.0, 2.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    seconds = len(audio) / sample_rate
    image = ax.imshow(db.T, origin="lower", aspect="auto", cmap="magma",
                      vmin=top - dynamic_range_db, vmax=top,
                      extent=(0.0, max(seconds, 1e-6), 0.0, sample_rate / 2000.0))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("kHz")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="dB")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; } h3 { font-size: 1rem; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { border: 1px solid #ccc;
padding: .2rem .6rem; text-align: left; font-size: .9rem; }
.clip { border-top: 1px solid #ddd; padding-top: 1rem; margin-top: 1rem; }
.ref { background: #f4f7fb; padding: .5rem 1rem; border-left: 4px solid #5b7db1; }
.warn { color: #a40000; font-weight: 600; } .ok { color: #1b6e20; }
.gate { padding: .8rem 1rem; margin: 1rem 0; border-radius: 4px; font-size: 1.05rem; }
.gate.rejected { background: #fde8e8; border: 2px solid #a40000; }
.gate.promoted { background: #e6f4e7; border: 2px solid #1b6e20; }
.gate.kept, .gate.none { background: #eef2f7; border: 2px solid #5b7db1; }
.gate b.word { font-size: 1.3rem; text-transform: uppercase; }
pre { background: #f6f6f6; padding: .8rem; overflow-x: auto; font-size: .8rem; }
img { max-width: 100%; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"
    body = "".join(
        f"<tr class='{_e(classes[i]) if i < len(classes) else ''}'>"
        + "".join(f"<td>{_e(_fmt(v))}</td>" for v in row) + "</tr>" for i, row in enumerate(rows))
    return f"<table>{head}{body}</table>"


def gate_section(gate: Mapping[str, Any] | None) -> str:
    """The gate's decision as a banner: the word (promoted, REJECTED, kept), its numbers and reason."""
    if not gate:
        return ("<div class='gate none'><b class='word'>no gate decision</b>: this report was "
                "made without the evaluation (`wavenet generate --evaluation metrics.json`)</div>")
    word = verdict(gate)
    return (f"<div class='gate {word}' id='gate'><b class='word'>{_e(word)}</b> &mdash; "
            f"{_e(gate_line(gate))}<br><small>reason: {_e(gate.get('reason', ''))}</small></div>")


_BASELINE_ORDER = {"uniform": 0, "unigram": 1, "bigram": 2}


def scores_section(evaluation: Mapping[str, Any]) -> str:
    """Held-out bits/sample of the model, the champion and the baselines (lower is better)."""
    bits = evaluation["bits_per_sample"]
    gate = evaluation.get("gate") or {}
    rows: list[list[Any]] = [["this model", bits, 0.0]]
    if gate.get("champion_bits") is not None:
        rows.append([f"champion ({gate.get('registered_model')} version {gate.get('champion_version')})",
                     gate["champion_bits"], gate["champion_bits"] - bits])
    baselines = evaluation.get("baselines", {})
    for name in sorted(baselines, key=lambda n: (_BASELINE_ORDER.get(n, 9), n)):
        rows.append([f"{name} baseline", baselines[name], baselines[name] - bits])
    parts = [f"<h2>Held-out bits/sample ({_e(evaluation.get('split', 'validation'))}, "
             f"{_e(evaluation.get('samples'))} predicted samples; lower is better)</h2>",
             _table(["model", "bits/sample", "minus this model's (> 0: this model is better)"], rows)]
    per_label = evaluation.get("per_label") or {}
    if per_label:
        parts.append(_table(["label", "this model", "bigram baseline", "held out as", "samples"], [
            [label, t["bits_per_sample"], t["baselines"]["bigram"], t.get("holdout", ""), t["samples"]]
            for label, t in per_label.items()]))
    return "\n".join(parts)


def _audio_tag(wav: bytes) -> str:
    return f"<audio controls preload='none' src='{_data_uri('audio/wav', wav)}'></audio>"


def reference_block(ref: Mapping[str, Any] | None, label: Any) -> str:
    """The validation clip of ``label`` (playable), or a note that there is none."""
    if ref is None:
        return f"<div class='ref'>no validation audio of label {_e(label)} to compare with</div>"
    return (f"<div class='ref'><b>reference</b>: {_e(ref['seconds'])} s of validation audio of "
            f"{_e(label)} ({_e(ref['source'])})<br>{_audio_tag(ref['wav'])} "
            f"<a href='{_e(ref['wav_file'])}' download>{_e(ref['wav_file'])}</a><br>"
            f"<img alt='spectrogram of the {_e(label)} reference' "
            f"src='{_data_uri('image/png', ref['png'])}'></div>")


def checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    """Each calibrated check: the clip's value next to the range real audio of its label spans."""
    rows, classes = [], []
    for c in checks:
        unit = f" {c['unit']}" if c.get("unit") else ""
        span = (f"<= {_fmt(c['high'])}" if c.get("low") is None
                else f"{_fmt(c['low'])} .. {_fmt(c['high'])}") + unit
        rows.append([c["name"], c["metric"], f"{_fmt(c['value'])}{unit}", span, c.get("tolerance", ""),
                     "pass" if c["passed"] else "FAIL"])
        classes.append("ok" if c["passed"] else "warn")
    return _table(["check", "metric", "clip", "range of real audio", "tolerance", "verdict"],
                  rows, classes)


def _clip_section(clip: Mapping[str, Any]) -> str:
    label = f" &mdash; {_e(clip['label'])}" if clip.get("label") is not None else ""
    parts = [f"<div class='clip'><h3>{_e(clip['name'])}{label}</h3>",
             f"{_audio_tag(clip['wav'])} <a href='{_e(clip['wav_file'])}' download>"
             f"{_e(clip['wav_file'])}</a>",
             f"<div><img alt='spectrogram of {_e(clip['name'])}' "
             f"src='{_data_uri('image/png', clip['png'])}'><br>"
             f"<a href='{_e(clip['png_file'])}'>{_e(clip['png_file'])}</a></div>"]
    warnings = clip.get("warnings") or []
    if warnings:
        parts.append("<ul>" + "".join(f"<li class='warn'>{_e(w)}</li>" for w in warnings) + "</ul>")
    else:
        parts.append("<p class='ok'>no sanity warnings</p>")
    if clip.get("checks"):
        parts.append(checks_table(clip["checks"]))
    parts.append("<details><summary>all metrics</summary>" + _table(
        ["metric", "value"], list((clip.get("metrics") or {}).items())) + "</details></div>")
    return "\n".join(parts)


def _thresholds_section(thresholds: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [[check, ", ".join(f"{k} {_fmt(v)}" for k, v in t.items())] for check, t in thresholds.items()]
    return ("<h2>Checks that need no data</h2><p>flagged on any clip, whatever its label:</p>"
            + _table(["check", "threshold"], rows))


def render_html(title: str, clips: Sequence[Mapping[str, Any]], info: Mapping[str, Any],
                config_yaml: str = "", *, evaluation: Mapping[str, Any] | None = None,
                references: Mapping[Any, Mapping[str, Any]] | None = None,
                thresholds: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The listening report.

    Args:
        title: page title (the run name and registered version).
        clips: one mapping per clip with ``name``, ``wav`` (bytes), ``wav_file``
            and ``png`` (bytes), ``png_file`` (relative names), ``label``,
            ``metrics`` (name -> number), ``checks`` (:func:`wavenet.generation.quality.check_ranges`)
            and ``warnings`` (strings).
        info: facts shown at the top (model, data, generator speed, ...).
        config_yaml: the experiment config, shown at the bottom.
        evaluation: :func:`wavenet.evaluate.evaluate`'s result (``metrics.json``):
            the gate banner and the bits/sample against champion and baselines.
        references: label -> validation clip (``wav``, ``png``, ``wav_file``,
            ``seconds``, ``source``), shown above that label's clips; None: no data.
        thresholds: the absolute checks' thresholds (:func:`wavenet.generation.quality.absolute_thresholds`).

    Returns:
        A self-contained HTML document.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>",
             gate_section((evaluation or {}).get("gate"))]
    if evaluation:
        parts.append(scores_section(evaluation))
    parts.append("<h2>Run</h2>" + _table(["", ""], list(info.items())))
    n_warn = sum(len(c.get("warnings") or []) for c in clips)
    parts.append(f"<h2>Samples</h2><p class='{'warn' if n_warn else 'ok'}'>"
                 f"{n_warn} sanity warning(s) over {len(clips)} clip(s)</p>")
    by_label: dict[Any, list[Mapping[str, Any]]] = {}
    for clip in clips:
        by_label.setdefault(clip.get("label"), []).append(clip)
    if references is not None and list(by_label) == [None]:  # unconditioned: every label's reference
        parts.append("<h2>Reference audio from validation</h2>"
                     + "".join(reference_block(r, lab) for lab, r in references.items()))
        references = None
    for label, group in by_label.items():
        if references is not None:
            parts.append(f"<h2>{_e(label)}</h2>" + reference_block(references.get(label), label))
        parts += [_clip_section(c) for c in group]
    if thresholds:
        parts.append(_thresholds_section(thresholds))
    if config_yaml:
        parts.append(f"<h2>Config</h2><pre>{_e(config_yaml)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
