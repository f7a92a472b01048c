"""Text search (lavila/search.py, lavila/search_html.py) over extracted features, with an "oracle" model whose
video and text embeddings agree (a colour's frames and the colour's name map to the same direction)."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lavila import extract, search
from lavila.data.synthetic_video import write_video
from lavila.data.tokenizer import tokenize

COLOURS = ("red", "green", "blue")
RGB = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


class _OracleVisual(nn.Module):
    patch_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.image_projection = nn.Parameter(torch.eye(3))

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        mean = video.float().mean(dim=(2, 3, 4))  # (B, 3) normalised channel means
        return mean - mean.mean(dim=1, keepdim=True)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_features(video) @ self.image_projection


class _Oracle(nn.Module):
    """Video: the dominant colour; text: one-hot of the colour word it contains."""

    num_frames = 2

    def __init__(self) -> None:
        super().__init__()
        self.visual = _OracleVisual()
        self.config = {"context_length": 16, "project_embed_dim": 3}
        self.words = {int(tokenize(c, 16)[1]): i for i, c in enumerate(COLOURS)}

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.visual(video), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(tokens), 3), 0.01)
        for row, ids in enumerate(tokens.tolist()):
            for token in ids:
                if token in self.words:
                    out[row, self.words[token]] = 1.0
        return nn.functional.normalize(out, dim=-1)



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture
def oracle(monkeypatch):
    info = {"num_frames": 2, "crop": 32, "norm": "openai", "context_length": 16}
    monkeypatch.setattr(extract, "load_model", lambda *a, **k: (_Oracle().eval(), dict(info)))


def _video(path: Path, colours: list[str], seconds: int = 1, fps: int = 30) -> None:
    rng = np.random.default_rng(len(colours))
    frames = []
    for colour in colours:
        for _ in range(seconds * fps):
            noise = rng.integers(-15, 15, (48, 64, 3))
            frames.append(np.clip(np.array(RGB[colour]) + noise, 0, 255).astype(np.uint8))
    write_video(path, frames, fps=fps)


@pytest.fixture
def features(tmp_path, oracle) -> Path:
    videos = tmp_path / "videos"
    _video(videos / "kitchen.mp4", ["red", "green", "blue"])
    _video(videos / "garden.mp4", ["blue", "red"])
    out = tmp_path / "feats"
    argv = ["--model", "oracle", "--input", str(videos), "--output-dir", str(out), "--window", "30", "--stride", "30",
            "--device", "cpu"]
    assert extract.main(argv) == 0
    return out


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images, self.rows = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "tr" and "hit" in (attrs.get("class") or ""):
            self.rows += 1


def test_narration_query_ranks_its_clip_first(features, tmp_path, capsys):
    # the narrated clip: kitchen, 1-2 s, "take the green cup"
    (tmp_path / "clips.csv").write_text("video,start_s,end_s\nkitchen,1.0,2.0\n")
    html = tmp_path / "report.html"
    argv = ["take the green cup", "--features-dir", str(features), "--top-k", "4", "--html", str(html),
            "--relevant", str(tmp_path / "clips.csv"), "--json", str(tmp_path / "hits.json")]
    assert search.main(argv) == 0
    hits = json.loads((tmp_path / "hits.json").read_text())[0]["hits"]
    assert (hits[0]["video"], hits[0]["start_s"], hits[0]["end_s"]) == ("kitchen", 1.0, 2.0)
    assert [h["relevant"] for h in hits] == [True, False, False, False]
    assert hits[0]["score"] > 0.7 and hits[1]["score"] < 0.3
    table = capsys.readouterr().out
    assert "kitchen" in table and "relevant" in table
    # blue windows: one per video, both ranked above every other window
    _, [blue] = search.search(features, ["blue"], top_k=2)
    assert sorted((h.video, h.start_s) for h in blue) == [("garden", 0.0), ("kitchen", 2.0)]

    parser = _Images()
    parser.feed(html.read_text())
    assert parser.rows == 4 and len(parser.images) == 4  # one thumbnail per hit
    from PIL import Image

    for attrs in parser.images:
        assert attrs["src"].startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1])))
        assert image.height == 96 and image.width > 3 * 64  # a strip of three frames
    assert "1 of 4 hits relevant" in html.read_text()


def test_search_refuses_other_feature_kinds(tmp_path, oracle):
    videos = tmp_path / "videos"
    _video(videos / "kitchen.mp4", ["red"])
    out = tmp_path / "feats"
    assert extract.main(["--model", "oracle", "--input", str(videos), "--output-dir", str(out), "--features",
                         "pooled", "--device", "cpu"]) == 0
    with pytest.raises(ValueError, match="--features proj"):
        search.load_index(out)
    assert search.main(["red", "--features-dir", str(tmp_path / "nothing")]) == 1


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        install = "apt-get update && apt-get install -y chromium"
        result = subprocess.run(["bash", "-c", install], capture_output=True, text=True)
        path = shutil.which("chromium")
        if path is None:
            pytest.skip(f"chromium is not installed and `{install}` failed: {result.stderr[-500:]}")
    return path


def _headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


CHECK = """<script>window.addEventListener("load", () => {
  const widths = Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);
  const pre = document.createElement("pre"); pre.id = "thumb-check"; pre.textContent = JSON.stringify(widths);
  document.body.appendChild(pre);
});</script>"""


@pytest.mark.slow
def test_report_renders_in_headless_chromium(features, tmp_path):
    chromium = _chromium()
    html = tmp_path / "report.html"
    assert search.main(["green", "--features-dir", str(features), "--top-k", "5", "--html", str(html)]) == 0
    checked = tmp_path / "checked.html"
    checked.write_text(html.read_text().replace("</body>", CHECK + "</body>"))
    result = _headless(chromium, tmp_path / "profile1", "--virtual-time-budget=5000", "--dump-dom",
                       checked.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    marker = result.stdout.split('<pre id="thumb-check">', 1)
    assert len(marker) == 2, result.stdout[-2000:]
    widths = json.loads(marker[1].split("</pre>", 1)[0])
    assert len(widths) == 5 and all(w > 0 for w in widths), widths
    shot = Path(os.environ.get("LAVILA_SCREENSHOT_DIR", tmp_path)) / "search_report.png"
    result = _headless(chromium, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=900,700",
                       html.as_uri())
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 5000, result.stderr[-2000:]
