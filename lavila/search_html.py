"""The self-contained HTML page of ``python -m lavila.search --html``: one row per hit with a thumbnail strip (frames
of the window, decoded from the video and embedded as a base64 JPEG), its video, times, score and relevance."""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lavila.utils.checkpoint import atomic_write

__all__ = ["window_frames", "thumbnail_jpeg", "write_html"]


def window_frames(video: Mapping[str, str], start_s: float, end_s: float, count: int = 3) -> np.ndarray:
    """``count`` frames (uint8 (count, H, W, 3)) of one window, from a ``videos.csv`` row (file or chunk folder)."""
    from lavila.data.video import load_clip, load_frames

    source, chunk_len = video["source"], float(video["chunk_len"])
    if chunk_len > 0:
        folder = Path(source)
        return load_clip(str(folder.parent), folder.name.removesuffix(".mp4"), start_s, end_s, count, chunk_len)
    return load_frames(source, count, start_s, end_s)


def thumbnail_jpeg(frames: np.ndarray, height: int = 96) -> bytes:
    """The frames side by side, scaled to ``height`` pixels, as JPEG bytes."""
    from PIL import Image

    tiles = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame))
        width = max(1, round(image.width * height / image.height))
        tiles.append(image.resize((width, height), Image.BILINEAR))
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 2
    buffer = io.BytesIO()
    strip.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{padding:6px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
tr.relevant td{background:#e8f6e8}tr.not-relevant td{background:#fbeaea}.badge{font-weight:bold}
img.thumb{display:block;border:1px solid #aaa}"""


def _row(hit: Any, video: Mapping[str, str], frames: int) -> str:
    try:
        jpeg = thumbnail_jpeg(window_frames(video, hit.start_s, hit.end_s, frames))
        thumb = (f'<img class="thumb" alt="frames of {html.escape(hit.video)} {hit.start_s:.2f}-{hit.end_s:.2f} s" '
                 f'src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">')
    except Exception as exc:  # noqa: BLE001 - a page with the reason beats no page
        thumb = f'<span class="error">no thumbnail: {html.escape(str(exc))}</span>'
    if hit.relevant is None:
        css, badge = "", ""
    else:
        css = "relevant" if hit.relevant else "not-relevant"
        badge = "&#10003; relevant" if hit.relevant else "&#10007; not relevant"
    return (f'<tr class="hit {css}"><td>{hit.rank}</td><td>{thumb}</td><td>{html.escape(hit.video)}</td>'
            f"<td>{hit.start_s:.2f}</td><td>{hit.end_s:.2f}</td><td>{hit.score:.4f}</td>"
            f'<td class="badge">{badge}</td></tr>')


def write_html(path: str | Path, query: str, hits: Sequence[Any], videos: Mapping[str, Mapping[str, str]],
               frames: int = 3) -> Path:
    """Write the page (atomically); thumbnails are decoded from the sources named in ``videos`` (videos.csv)."""
    rows = "\n".join(_row(h, videos[h.video], frames) for h in hits)
    marked = [h for h in hits if h.relevant is not None]
    summary = (f"<p>{sum(bool(h.relevant) for h in marked)} of {len(marked)} hits relevant</p>" if marked else "")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>search: {html.escape(query)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>&ldquo;{html.escape(query)}&rdquo;</h1>{summary}\n"
            "<table><thead><tr><th>rank</th><th>frames</th><th>video</th><th>start (s)</th><th>end (s)</th>"
            f"<th>score</th><th></th></tr></thead><tbody>\n{rows}\n</tbody></table></body></html>\n")
    return atomic_write(Path(path), lambda f: f.write(page.encode()))
