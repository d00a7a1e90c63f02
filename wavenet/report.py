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

from wavenet.audio import float_to_pcm16, power_spectrogram

__all__ = ["wav_bytes", "spectrogram_png", "render_html"]


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
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { border: 1px solid #ccc;
padding: .2rem .6rem; text-align: left; font-size: .9rem; }
.clip { border-top: 1px solid #ddd; padding-top: 1rem; margin-top: 1rem; }
.warn { color: #a40000; font-weight: 600; } .ok { color: #1b6e20; }
pre { background: #f6f6f6; padding: .8rem; overflow-x: auto; font-size: .8rem; }
img { max-width: 100%; }
"""


def render_html(title: str, clips: Sequence[Mapping[str, Any]], info: Mapping[str, Any],
                config_yaml: str = "") -> str:
    """The listening report.

    Args:
        title: page title.
        clips: one mapping per clip with ``name``, ``wav`` (bytes), ``wav_file``
            and ``png`` (bytes), ``png_file`` (relative names), ``label``,
            ``metrics`` (name -> number) and ``warnings`` (strings).
        info: facts shown at the top (model, data, generator speed, ...).
        config_yaml: the experiment config, shown at the bottom.

    Returns:
        A self-contained HTML document.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>", "<table>"]
    for key, value in info.items():
        parts.append(f"<tr><th>{_e(key)}</th><td>{_e(_fmt(value))}</td></tr>")
    parts.append("</table>")
    n_warn = sum(len(c.get("warnings") or []) for c in clips)
    parts.append(f"<p class='{'warn' if n_warn else 'ok'}'>"
                 f"{n_warn} sanity warning(s) over {len(clips)} clip(s)</p>")
    for clip in clips:
        parts.append(f"<div class='clip'><h2>{_e(clip['name'])}"
                     f"{' &mdash; ' + _e(clip['label']) if clip.get('label') is not None else ''}</h2>")
        parts.append(f"<audio controls preload='none' src='{_data_uri('audio/wav', clip['wav'])}'>"
                     f"</audio> <a href='{_e(clip['wav_file'])}' download>{_e(clip['wav_file'])}</a>")
        parts.append(f"<div><img alt='spectrogram of {_e(clip['name'])}' "
                     f"src='{_data_uri('image/png', clip['png'])}'><br>"
                     f"<a href='{_e(clip['png_file'])}'>{_e(clip['png_file'])}</a></div>")
        warnings = clip.get("warnings") or []
        if warnings:
            parts.append("<ul>" + "".join(f"<li class='warn'>{_e(w)}</li>" for w in warnings) + "</ul>")
        else:
            parts.append("<p class='ok'>no sanity warnings</p>")
        parts.append("<table>" + "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>"
            for k, v in (clip.get("metrics") or {}).items()) + "</table></div>")
    if config_yaml:
        parts.append(f"<h2>Config</h2><pre>{_e(config_yaml)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
