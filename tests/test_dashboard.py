"""The static dashboard: its pages parsed with the stdlib ``html.parser`` match the feature group's own queries;
prompt tokens are located with capture's own tokenizer; the velocity readout agrees with ``velocity_lens``; pages
load in a real headless Chromium without console errors (skipped when no browser is installed)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_store
from safetensors.torch import save_file

import actstore
from actstore import DashboardConfig, FeaturePassConfig, feature_pass, write_dashboard

REPO = Path(__file__).resolve().parents[1]


class _Page(HTMLParser):
    """Collects the rows of ``<table id=...>`` (their attributes and cell texts), marked tokens, links, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
        self.links: list[str] = []
        self.srcs: list[str] = []
        self.marks: list[str] = []
        self.svgs = 0
        self._table: str | None = None
        self._row: tuple[dict[str, str], list[str]] | None = None
        self._cell: list[str] | None = None
        self._mark: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = (a, [])
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "mark":
            self._mark = []
        elif tag == "svg":
            self.svgs += 1
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if "src" in a or (tag == "link" and a.get("rel") != "icon"):
            self.srcs.append(a.get("src") or a.get("href", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            assert self._table is not None
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "mark" and self._mark is not None:
            self.marks.append("".join(self._mark))
            self._mark = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._mark is not None:
            self._mark.append(data)


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _sae(path: Path, d: int, m: int, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, d, generator=g) / d**0.5
    save_file({"W_enc": w.t().contiguous(), "W_dec": w.contiguous(), "b_enc": torch.randn(m, generator=g) * 0.1,
               "b_dec": torch.zeros(d)}, str(path))
    return path


def _check_top_table(page: _Page, fs: actstore.ActStore, f: int, k: int) -> None:
    """The page's top-examples table is ``fs.top(f, k)``, row for row and field for field."""
    want = fs.top(f, k).to_records()
    got = page.tables["top"]
    assert len(got) == len(want) > 0
    for (attrs, cells), w in zip(got, want, strict=True):
        assert int(attrs["data-row"]) == w["row"] and int(cells[2]) == w["row"]
        assert float(attrs["data-activation"]) == w["activation"]  # repr round-trips the float exactly
        assert float(cells[1]) == pytest.approx(w["activation"], rel=1e-3)
        assert int(attrs["data-sample"]) == w["sample"] and int(cells[3]) == w["sample"]
        assert int(attrs["data-step"]) == w["step"]
        assert int(attrs["data-position"]) == w["position"] and int(cells[5]) == w["position"]
        assert attrs["data-token"] == w["token"] and cells[6].startswith(w["token"])
        assert attrs["data-prompt"] == w["prompt"]


@pytest.fixture(scope="module")
def decision_site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("dash")
    truth = write_store(tmp / "run.zarr", n_samples=20, steps=4, horizon=5, d=32, layers=(6,), dtype=torch.float32)
    sae = _sae(tmp / "sae.safetensors", 32, 48)
    store = actstore.ActStore.open(truth.path)
    feature_pass(store, sae, FeaturePassConfig(layer=6, role="decision", name="sae6", top_k=12), k=4, progress=False)
    fs = store.features("sae6")
    index = write_dashboard(fs, tmp / "site", DashboardConfig(top=10, max_features=30))
    yield {"tmp": tmp, "store": store, "fs": fs, "index": index, "truth": truth}
    store.close()


def test_index_lists_the_most_frequent_features_and_every_page_matches_top(decision_site: dict) -> None:
    fs, index = decision_site["fs"], decision_site["index"]
    page = _parse(index)
    count = fs.array("count")
    listed = [int(cells[0]) for _, cells in page.tables["features"]]
    want = [int(f) for f in np.argsort(-count, kind="stable")[:30] if count[f] > 0]
    assert listed == want
    for (_, cells), f in zip(page.tables["features"], listed, strict=True):
        assert cells[1] == f"{fs.density()[f]:.3g}"
        assert int(cells[2].replace(",", "")) == int(count[f])
    assert [h for h in page.links if h.startswith("f/")] == [f"f/{f}.html" for f in listed]
    assert page.srcs == []  # nothing loaded from anywhere: inline CSS, SVG and script
    for f in listed:
        fp = _parse(index.parent / "f" / f"{f}.html")
        _check_top_table(fp, fs, f, 10)
        assert fp.svgs >= 4  # histogram, density by step, mean by step, density by episode
        assert fp.srcs == []
        html = (index.parent / "f" / f"{f}.html").read_text()
        assert "firing density by episode" in html and "Velocity lens" not in html
    assert not (index.parent / "f" / f"{int(np.argmin(count))}.html").exists() or count.min() > 0


def test_overwrite_rules(decision_site: dict, tmp_path: Path) -> None:
    fs, index = decision_site["fs"], decision_site["index"]
    with pytest.raises(actstore.StoreExistsError, match="overwrite"):
        write_dashboard(fs, index.parent)
    write_dashboard(fs, index.parent, DashboardConfig(top=10, max_features=30), overwrite=True)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(actstore.StoreExistsError, match="not a dashboard"):
        write_dashboard(fs, other, overwrite=True)
    assert (other / "mine.txt").read_text() == "keep"
    with pytest.raises(actstore.ConfigError, match="tokenizer"):
        DashboardConfig(tokenizer="bpe")


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real capture of the reference pi0.5 (instruction positions start after 2 x 256 image tokens)."""
    tmp = tmp_path_factory.mktemp("cap")
    out = tmp / "run.zarr"
    env_cmd = [sys.executable, "-m", "capture", "--output-dir", str(out), "--max-batches", "1", "--batch-size", "4",
               "--layers", "14", "--num-steps", "4", "--quiet"]
    proc = subprocess.run(env_cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_instruction_pages_mark_the_token_capture_tokenized(captured: Path, tmp_path: Path) -> None:
    from capture import tokenize

    with actstore.ActStore.open(captured) as store:
        assert int(store.rows("instruction")["position"].min()) == 512  # two cameras of 256 tokens come first
        sae = _sae(tmp_path / "sae.safetensors", store[14, "instruction"].shape[1], 40)
        feature_pass(store, sae, FeaturePassConfig(layer=14, role="instruction", name="ins"), k=4, progress=False)
        fs = store.features("ins")
        index = write_dashboard(fs, tmp_path / "site", DashboardConfig(top=6))
        vocab = int(store.attrs["model"]["config"]["vocab_size"])
        plen = int(store.attrs["capture"]["options"]["prompt_len"])
        checked = 0
        for _, cells in _parse(index).tables["features"]:
            f = int(cells[0])
            page = _parse(index.parent / "f" / f"{f}.html")
            _check_top_table(page, fs, f, 6)
            top = fs.top(f, 6)
            for (attrs, _), mark, prompt, tok in zip(page.tables["top"], page.marks, top.prompt, top.token,
                                                     strict=True):
                j = int(attrs["data-prompt-index"])
                ids, mask = tokenize([prompt], plen, vocab)
                assert 0 <= j < int(mask.sum())
                assert tok == f"id {int(ids[0, j])}"  # .top() reads the id at the right prompt index
                assert mark == ["<bos>", *prompt.split(), "\\n"][j]  # and the page marks that word
                checked += 1
        assert checked >= 10


def test_velocity_readout_matches_the_velocity_lens(captured: Path, tmp_path: Path) -> None:
    from capture import ModelSpec, feature_velocity, load_model, velocity_lens

    model, _ = load_model(ModelSpec("reference"))
    with actstore.ActStore.open(captured) as store:
        d = store[14, "decision"].shape[1]
        sae = _sae(tmp_path / "sae.safetensors", d, 64)
        feature_pass(store, sae, FeaturePassConfig(layer=14, name="dec"), k=4, progress=False)
        fs = store.features("dec")
        f = int(np.argmax(fs.array("count")))
        dv, top = feature_velocity(fs, model, f, 8)
        assert dv.shape == (len(top), model.config.action_dim) and len(top) == 8
        # with the feature: exactly what velocity_lens reads for those rows
        full = velocity_lens(store, model, 14)[top.row]
        # without it: the same final norm and head on x - a * W_dec[f], conditioning joined by (sample, step)
        x = store[14, "decision"][top.row].float() - torch.as_tensor(top.activation)[:, None] * fs.sae().W_dec[f]
        cr = store.cond_rows("adarms")
        at = [int(np.nonzero((cr["sample"] == s) & (cr["step"] == t))[0][0]) for s, t in zip(top.sample, top.step,
                                                                                               strict=True)]
        cond = store.cond("adarms")[at]
        norm = model.paligemma_with_expert.gemma_expert.model.norm
        without = model.action_out_proj(norm(x, cond)[0])
        torch.testing.assert_close(dv, (full - without).float(), rtol=1e-5, atol=1e-5)
        index = write_dashboard(fs, tmp_path / "site", DashboardConfig(top=8, max_features=3),
                                velocity=lambda fs, f, k: feature_velocity(fs, model, f, k))
        html = (index.parent / "f" / f"{f}.html").read_text()
        assert "Velocity lens" in html
        ins = _ins_group(store, tmp_path)
        with pytest.raises(actstore.ConfigError, match="instruction rows"):
            write_dashboard(ins, tmp_path / "ins_site", velocity=lambda fs, f, k: feature_velocity(fs, model, f, k))
        with pytest.raises(actstore.ConfigError, match="decision"):
            feature_velocity(ins, model, 0)


def _ins_group(store: actstore.ActStore, tmp_path: Path) -> actstore.ActStore:
    sae = _sae(tmp_path / "ins.safetensors", store[14, "instruction"].shape[1], 16)
    feature_pass(store, sae, FeaturePassConfig(layer=14, role="instruction", name="ins_v"), k=2, progress=False)
    return store.features("ins_v")


# ---------------------------------------------------------------------------------------------- real browser
def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _load(browser: str, url: str, tmp: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and the console messages logged at level error (Chromium's stderr log)."""
    # its own process group: Chromium's helper processes inherit the pipes, so on a timeout the whole group is
    # killed (killing the main process alone leaves communicate() waiting on the helpers' open pipes forever)
    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={tmp}", "--virtual-time-budget=3000", "--dump-dom", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{browser} did not finish loading {url} in 120 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # no helper process outlives the page
    assert proc.returncode == 0, err[-2000:]
    console = [ln for ln in err.splitlines() if "CONSOLE" in ln]
    return out, console


@pytest.mark.timeout(300)
def test_pages_load_in_headless_chromium(decision_site: dict, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    index = decision_site["index"]
    # the check can fail: a page with a script error is reported
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, console = _load(browser, bad.as_uri(), tmp_path / "p0")
    assert any("undefinedFunction" in ln for ln in console), console
    dom, console = _load(browser, index.as_uri(), tmp_path / "p1")
    assert console == []
    n = len(_parse(index).tables["features"])
    assert re.search(rf'<span id="shown">{n}</span>', dom)  # the search script ran over every row
    f = int(_parse(index).tables["features"][0][1][0])
    dom, console = _load(browser, index.with_name("index.html").as_uri() + f"#q=f{f}", tmp_path / "p2")
    assert console == []
    assert re.search(r'<span id="shown">(\d+)</span>', dom).group(1) == "1"  # a search from the URL hash
    page = index.parent / "f" / f"{f}.html"
    dom, console = _load(browser, page.as_uri(), tmp_path / "p3")
    assert console == []
    rendered = _Page()
    rendered.feed(dom)
    _check_top_table(rendered, decision_site["fs"], f, 10)  # the table as the browser built it
