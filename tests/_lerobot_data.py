"""Write small LeRobot-format datasets (v2.1 and v3.0 layouts) for the dataset-capture tests.

lerobot's own writer (``LeRobotDataset.create`` / ``add_frame``) cannot be installed beside transformers >= 5.5, so
the files are written with the libraries lerobot itself writes them with: pyarrow parquet tables, PNG frames in
``{bytes, path}`` structs (Hugging Face ``Image``), AV1 videos (PyAV's libsvtav1, lerobot's default codec, yuv420p,
GOP 2). Every frame's pixels encode (episode, frame) so tests can tell which frame reached the model.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TASKS = ("put the black bowl on the plate", "open the middle drawer of the cabinet")
CAMERAS = ("observation.images.image", "observation.images.wrist_image")


@dataclass(frozen=True)
class Spec:
    """What to write."""

    version: str = "v3.0"
    """v2.1 or v3.0."""
    lengths: tuple[int, ...] = (7, 5, 6)
    """Frames per episode."""
    tasks: tuple[int, ...] = (0, 1, 0)
    """Task index of each episode."""
    storage: str = "video"
    """video (AV1 mp4) or image (PNG in the parquet)."""
    height: int = 64
    width: int = 64
    fps: int = 10
    state_dim: int = 8
    cameras: tuple[str, ...] = field(default=CAMERAS)


def frame_pixels(episode: int, frame: int, cam: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: a smooth pattern whose level encodes (episode, frame, camera); survives AV1 closely."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 40 + 20 * episode + 10 * frame + 60 * cam
    img = np.stack([(base + 0 * xx) % 256, (base + xx * 64 // w) % 256, (base // 2 + yy * 64 // h) % 256], -1)
    return img.astype(np.uint8)


def state_of(episode: int, frame: int, dim: int) -> np.ndarray:
    return (np.arange(dim, dtype=np.float32) * 0.1 + episode + 0.01 * frame).astype(np.float32)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _encode(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libsvtav1", rate=fps, options={"g": "2", "crf": "30", "preset": "12"})
        stream.pix_fmt = "yuv420p"
        stream.height, stream.width = frames[0].shape[:2]
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_dataset(root: Path, spec: Spec = Spec()) -> Path:
    """Write the dataset under ``root``; returns ``root``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(exist_ok=True)
    features: dict = {
        spec.cameras[i]: {"dtype": spec.storage, "shape": [spec.height, spec.width, 3],
                          "names": ["height", "width", "channels"]} for i in range(len(spec.cameras))}
    features.update({
        "observation.state": {"dtype": "float32", "shape": [spec.state_dim], "names": None},
        "action": {"dtype": "float32", "shape": [7], "names": None},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in (
            ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
            ("task_index", "int64"))}})
    v3 = spec.version == "v3.0"
    info = {"codebase_version": spec.version, "robot_type": "panda", "fps": spec.fps, "features": features,
            "total_episodes": len(spec.lengths), "total_frames": sum(spec.lengths), "total_tasks": len(TASKS),
            "chunks_size": 1000, "splits": {"train": f"0:{len(spec.lengths)}"},
            "data_path": ("data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet" if v3
                          else "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"),
            "video_path": None if spec.storage != "video" else (
                "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if v3
                else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))

    tables, all_states, videos = [], [], {c: [] for c in spec.cameras}
    episodes_meta, ep_stats, start = [], [], 0
    for ep, (n, task) in enumerate(zip(spec.lengths, spec.tasks, strict=True)):
        states = np.stack([state_of(ep, f, spec.state_dim) for f in range(n)])
        all_states.append(states)
        cols = {"observation.state": pa.array(list(states), type=pa.list_(pa.float32())),
                "action": pa.array([np.zeros(7, np.float32)] * n, type=pa.list_(pa.float32())),
                "timestamp": pa.array(np.arange(n, dtype=np.float32) / spec.fps),
                "frame_index": pa.array(np.arange(n, dtype=np.int64)),
                "episode_index": pa.array(np.full(n, ep, dtype=np.int64)),
                "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "task_index": pa.array(np.full(n, task, dtype=np.int64))}
        for ci, cam in enumerate(spec.cameras):
            imgs = [frame_pixels(ep, f, ci, spec.height, spec.width) for f in range(n)]
            if spec.storage == "image":
                cols[cam] = pa.array([{"bytes": _png(im), "path": None} for im in imgs],
                                     type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
            elif v3:
                videos[cam].extend(imgs)
            else:
                _encode(root / info["video_path"].format(episode_chunk=0, video_key=cam, episode_index=ep), imgs,
                        spec.fps)
        table = pa.table(cols)
        meta = {"episode_index": ep, "tasks": [TASKS[task]], "length": n}
        if v3:
            tables.append(table)
            meta.update({"data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": start,
                         "dataset_to_index": start + n, "meta/episodes/chunk_index": 0,
                         "meta/episodes/file_index": 0})
            for cam in spec.cameras if spec.storage == "video" else ():
                meta.update({f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": 0,
                             f"videos/{cam}/from_timestamp": start / spec.fps,
                             f"videos/{cam}/to_timestamp": (start + n) / spec.fps})
        else:
            path = root / info["data_path"].format(episode_chunk=0, episode_index=ep)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            ep_stats.append({"episode_index": ep, "stats": {"observation.state": {
                "mean": states.mean(0).tolist(), "std": states.std(0).tolist(), "min": states.min(0).tolist(),
                "max": states.max(0).tolist(), "count": [n]}}})
        episodes_meta.append(meta)
        start += n
    if v3:
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), root / "data" / "chunk-000" / "file-000.parquet")
        for cam, frames in videos.items():
            if frames:
                _encode(root / info["video_path"].format(video_key=cam, chunk_index=0, file_index=0), frames,
                        spec.fps)
        (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episodes_meta), root / "meta/episodes/chunk-000/file-000.parquet")
        # pandas' to_parquet of a frame indexed by the task strings, as lerobot writes it
        pq.write_table(pa.table({"task_index": list(range(len(TASKS))), "__index_level_0__": list(TASKS)}),
                       root / "meta" / "tasks.parquet")
        s = np.concatenate(all_states)
        (root / "meta" / "stats.json").write_text(json.dumps({"observation.state": {
            "mean": s.mean(0).tolist(), "std": s.std(0).tolist(), "min": s.min(0).tolist(), "max": s.max(0).tolist(),
            "q01": np.quantile(s, 0.01, axis=0).tolist(), "q99": np.quantile(s, 0.99, axis=0).tolist(),
            "count": [len(s)]}}))
    else:
        (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(m) + "\n" for m in episodes_meta))
        (root / "meta" / "tasks.jsonl").write_text(
            "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS)))
        (root / "meta" / "episodes_stats.jsonl").write_text("".join(json.dumps(m) + "\n" for m in ep_stats))
    return root
