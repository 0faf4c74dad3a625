"""Capture over a local LeRobot-format dataset (v2.1 and v3.0 layouts, frames as AV1 videos or PNG images)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from _lerobot_data import TASKS, Spec, frame_pixels, state_of, write_dataset  # noqa: E402

import actstore  # noqa: E402
from capture import ReferenceConfig, ReferencePi05  # noqa: E402
from capture._dataset import DatasetSource, ModelInputs, prepare_images  # noqa: E402
from capture._dataset_config import DatasetConfig, DatasetError  # noqa: E402
from capture._run import capture_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPENPI_IMAGE_TOOLS = ROOT.parent / "shared/third_party/openpi/src/openpi/shared/image_tools.py"
SMALL = dict(batch_size=4, num_steps=2, layers=(6, 14), quiet=True)
os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder's banner to errors only


@pytest.fixture(scope="module")
def v3(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("v3") / "libero", Spec(version="v3.0"))


@pytest.fixture(scope="module")
def v21(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("v21") / "libero", Spec(version="v2.1"))


def _expected_plan(spec: Spec, episodes=None, stride=1) -> tuple[np.ndarray, np.ndarray]:
    eps = range(len(spec.lengths)) if episodes is None else episodes
    pairs = [(e, f) for e in eps for f in range(0, spec.lengths[e], stride)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def test_capture_rows_carry_episode_frame_task(v3, tmp_path):
    path = capture_run(dataset=str(v3), output_dir=str(tmp_path / "run.zarr"), **SMALL)
    spec = Spec()
    ep, fr = _expected_plan(spec)
    with actstore.ActStore.open(str(path)) as store:
        s = store.samples()
        assert s["sample"].tolist() == list(range(len(ep)))  # one sample per frame, in dataset order
        assert s["episode"].tolist() == ep.tolist() and s["frame"].tolist() == fr.tolist()
        task = np.array([spec.tasks[e] for e in ep])
        assert s["task"].tolist() == task.tolist()
        assert s["prompt"] == [TASKS[t] for t in task]
        for role in ("decision", "instruction"):
            rows = store.rows(role)
            idx = rows["sample"]
            assert rows["episode"].tolist() == ep[idx].tolist() and rows["frame"].tolist() == fr[idx].tolist()
            assert rows["task"].tolist() == task[idx].tolist()
        view = store.select(14, "decision", where=lambda r: r["task"] == 1)
        rows = store.rows("decision")
        want = rows["task"] == 1
        assert len(view) == int(want.sum()) > 0
        assert torch.equal(view[:], store[14, "decision"][:][torch.from_numpy(np.flatnonzero(want))])
        assert store.attrs["capture"]["dataset"]["codebase_version"] == "v3.0"
        assert store.attrs["capture"]["dataset"]["frames"] == len(ep)


def test_episode_ranges_and_stride(v3, tmp_path):
    src = DatasetSource(DatasetConfig(dataset=str(v3), episodes="0,2", frame_stride=2), batch_size=3)
    ep, fr = _expected_plan(Spec(), episodes=(0, 2), stride=2)
    assert src.episode.tolist() == ep.tolist() and src.frame.tolist() == fr.tolist()
    assert src.num_batches == -(-len(ep) // 3)
    got = torch.cat([src.batch(k).frame for k in range(src.num_batches)])
    assert got.tolist() == fr.tolist()


@pytest.mark.parametrize("layout", ["v3", "v21"])
def test_video_frames_are_the_right_frames(layout, request):
    root = request.getfixturevalue(layout)
    src = DatasetSource(DatasetConfig(dataset=str(root), normalization="mean_std"),
                        ModelInputs(image_size=64, vocab_size=512), batch_size=5)
    for k in range(src.num_batches):
        obs = src.batch(k)
        for i in range(len(obs.sample)):
            e, f = int(obs.episode[i]), int(obs.frame[i])
            for cam in range(2):
                want = torch.from_numpy(frame_pixels(e, f, cam, 64, 64)).permute(2, 0, 1).float() / 255 * 2 - 1
                err = (obs.images[cam][i] - want).abs().mean().item()
                # AV1 is lossy: the right frame is within a few levels, the neighbouring frame 10 levels away
                assert err < 0.03, (layout, e, f, cam, err)


def test_state_normalised_with_dataset_stats(v3, v21):
    spec = Spec()
    states = np.concatenate([np.stack([state_of(e, f, spec.state_dim) for f in range(n)])
                             for e, n in enumerate(spec.lengths)]).astype(np.float64)
    obs = DatasetSource(DatasetConfig(dataset=str(v3)), ModelInputs(action_dim=32), batch_size=64).batch(0)
    q01, q99 = np.quantile(states, 0.01, axis=0), np.quantile(states, 0.99, axis=0)
    want = (states - q01) / (q99 - q01 + 1e-6) * 2 - 1
    np.testing.assert_allclose(obs.state[:, : spec.state_dim].numpy(), want, rtol=1e-5, atol=1e-5)
    assert torch.all(obs.state[:, spec.state_dim:] == 0)  # zero-padded to the model's action dim
    # v2.1: per-episode stats pooled into the dataset's mean / std
    obs = DatasetSource(DatasetConfig(dataset=str(v21), normalization="mean_std"), batch_size=64).batch(0)
    want = (states - states.mean(0)) / (states.std(0) + 1e-6)
    np.testing.assert_allclose(obs.state[:, : spec.state_dim].numpy(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(DatasetError, match="q01"):  # v2.1 has no quantiles: said, not guessed
        DatasetSource(DatasetConfig(dataset=str(v21)))


def test_prompts_are_the_task_strings(v3):
    obs = DatasetSource(DatasetConfig(dataset=str(v3)), ModelInputs(vocab_size=512), batch_size=64).batch(0)
    spec = Spec()
    ep, _ = _expected_plan(spec)
    assert obs.prompt == [TASKS[spec.tasks[e]] for e in ep]
    for i, prompt in enumerate(obs.prompt):  # BOS + one id per word + "\n", right-padded
        n = len(prompt.split()) + 2
        assert obs.lang_masks[i].tolist() == [True] * n + [False] * (48 - n)
        assert obs.lang_tokens[i, 0].item() == 2
    same = [i for i in range(len(ep)) if obs.prompt[i] == obs.prompt[0]]
    assert all(torch.equal(obs.lang_tokens[i], obs.lang_tokens[0]) for i in same)
    with pytest.raises(DatasetError, match="prompt-len"):
        DatasetSource(DatasetConfig(dataset=str(v3), prompt_len=4), batch_size=2).batch(0)


def test_images_reach_the_model_unchanged(tmp_path):
    """PNG frames already at the model's size: the vision tower sees exactly x / 255 * 2 - 1."""
    root = write_dataset(tmp_path / "png", Spec(storage="image", height=56, width=56, lengths=(3, 2), tasks=(0, 1)))
    model = ReferencePi05(ReferenceConfig(image_size=56, depth=2)).eval()
    seen: list[torch.Tensor] = []
    model.paligemma_with_expert.paligemma.model.vision_tower.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().clone()))
    src = DatasetSource(DatasetConfig(dataset=str(root)), ModelInputs.of(model), batch_size=8)
    assert src.inputs.image_size == 56
    obs = src.batch(0)
    with torch.no_grad():
        model.sample_actions(obs.images, obs.img_masks, obs.lang_tokens, obs.lang_masks, noise=obs.noise, num_steps=1)
    assert len(seen) == 2
    for cam, pixels in enumerate(seen):
        want = torch.stack([torch.from_numpy(frame_pixels(int(e), int(f), cam, 56, 56)) for e, f in
                            zip(obs.episode, obs.frame, strict=True)]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
        assert torch.equal(pixels, want)


def _openpi_resize():
    """openpi's own ``resize_with_pad_torch``, taken from its source where it lies (the module imports jax)."""
    if not OPENPI_IMAGE_TOOLS.is_file():
        pytest.skip(f"openpi's image_tools.py not found at {OPENPI_IMAGE_TOOLS}")
    tree = ast.parse(OPENPI_IMAGE_TOOLS.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "resize_with_pad_torch")
    ns = {"torch": torch, "F": torch.nn.functional}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(OPENPI_IMAGE_TOOLS), "exec"), ns)
    return ns["resize_with_pad_torch"]


@pytest.mark.parametrize("hw", [(48, 64), (64, 40), (256, 256)])
def test_resize_matches_openpi_preprocessing(hw):
    """Frames of another size are resized exactly as openpi's PyTorch pi0.5 does (float [-1, 1], bilinear, pad)."""
    resize = _openpi_resize()
    h, w = hw
    frames = np.stack([frame_pixels(e, 0, 0, h, w) for e in range(3)])
    frames[:, ::7] = 255  # some high-frequency content
    ours = prepare_images(frames, 224)
    ref = resize(torch.from_numpy(frames).float() / 255.0 * 2.0 - 1.0, 224, 224)  # channels-last in and out
    assert ours.shape == (3, 3, 224, 224)
    assert torch.equal(ours, ref.permute(0, 3, 1, 2))


_KILL = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from capture._dataset import DatasetSource
from capture._run import capture_run
real = DatasetSource.batch
def batch(self, k):
    if k == {kill_at}:
        time.sleep(6)  # past the writer's 5 s commit interval: batches 0 .. k-1 are durable
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no rollback: a real kill
    return real(self, k)
DatasetSource.batch = batch
capture_run(dataset={root!r}, output_dir={out!r}, batch_size=4, num_steps=2, layers=(6, 14), quiet=True)
"""


@pytest.mark.slow
def test_resume_after_kill_mid_episode(v3, tmp_path):
    out = str(tmp_path / "run.zarr")
    # batches of 4 over episodes of 7, 5, 6 frames: batch 2 starts at episode 1, frame 1 (mid-episode)
    code = _KILL.format(tests=str(ROOT / "tests"), kill_at=2, root=str(v3), out=out)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with actstore.ActStore.open(out) as store:
        assert store.num_samples == 8
    capture_run(dataset=str(v3), output_dir=out, resume=True, **SMALL)
    whole = capture_run(dataset=str(v3), output_dir=str(tmp_path / "whole.zarr"), **SMALL)
    ep, fr = _expected_plan(Spec())
    with actstore.ActStore.open(out) as a, actstore.ActStore.open(str(whole)) as b:
        assert a.samples()["episode"].tolist() == ep.tolist() and a.samples()["frame"].tolist() == fr.tolist()
        for role in ("decision", "instruction"):
            assert {k: v.tolist() for k, v in a.rows(role).items()} == {k: v.tolist() for k, v in b.rows(role).items()}
            assert torch.equal(a[14, role][:], b[14, role][:])


def test_resume_with_another_selection_is_refused(v3, tmp_path):
    out = str(tmp_path / "run.zarr")
    capture_run(dataset=str(v3), output_dir=out, episodes="0", **SMALL)
    with pytest.raises(Exception, match="--episodes"):
        capture_run(dataset=str(v3), output_dir=out, episodes="0-1", resume=True, **SMALL)


def test_clear_errors(v3, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="meta/info.json"):
        capture_run(dataset=str(tmp_path / "empty"), output_dir=str(tmp_path / "a.zarr"), **SMALL)
    with pytest.raises(DatasetError, match="not a directory"):
        DatasetSource(DatasetConfig(dataset=str(tmp_path / "nope")))
    with pytest.raises(DatasetError, match=r"observation.images.top.*observation.images.image"):
        DatasetSource(DatasetConfig(dataset=str(v3), cameras=("observation.images.top",)))
    with pytest.raises(DatasetError, match=r"episode 3 .*3 episodes \(0-2\)"):
        DatasetSource(DatasetConfig(dataset=str(v3), episodes="1-3"))
    with pytest.raises(DatasetError, match="'A-B'"):
        DatasetConfig(dataset=str(v3), episodes="1..3")
    assert not (tmp_path / "a.zarr").exists()  # refused before anything was created


def test_empty_camera_slot(v3):
    src = DatasetSource(DatasetConfig(dataset=str(v3), cameras=("observation.images.image", "-")),
                        ModelInputs(image_size=32), batch_size=2)
    obs = src.batch(0)
    assert obs.img_masks[1].tolist() == [False, False] and torch.all(obs.images[1] == -1)
    assert obs.img_masks[0].tolist() == [True, True]
