"""Read a local LeRobot-format dataset directory (codebase versions v2.0, v2.1 and v3.0) without lerobot itself.

lerobot's ``LeRobotDataset`` cannot live in this environment: lerobot 0.4.x (the last release for Python 3.11) and
the standalone ``lerobot-dataset`` 0.4.4 both pin ``huggingface-hub<0.36`` (transformers >= 5.5 needs >= 1.0),
lerobot also pins ``torch<2.11`` and imports torchvision, and 0.5+ needs Python 3.12. So the format is read with the
libraries it is made of: pyarrow for the parquet tables, Pillow for frames stored as images, PyAV for frames stored as
videos. What is written here by hand is only the layout (where each table and file lives), which is small and
documented in ``meta/info.json`` itself:

- v2.x: ``meta/episodes.jsonl`` (episode_index, tasks, length), ``meta/tasks.jsonl`` (task_index, task), one parquet
  per episode at ``info["data_path"]`` (``episode_chunk = episode_index // chunks_size``), one video per episode and
  camera at ``info["video_path"]`` whose timestamps start at 0; statistics in ``meta/stats.json`` (v2.0) or
  ``meta/episodes_stats.jsonl`` (v2.1, aggregated here).
- v3.0: ``meta/episodes/chunk-*/file-*.parquet`` (episode_index, tasks, length, ``data/chunk_index``,
  ``data/file_index``, ``videos/<key>/{chunk_index,file_index,from_timestamp}``), ``meta/tasks.parquet`` (task
  strings and task_index), many episodes per data parquet and per video file (a frame sits at
  ``from_timestamp + timestamp``); statistics in ``meta/stats.json``.

Frames (``dtype`` "image") are stored in the parquet as ``{bytes, path}`` structs (Hugging Face ``Image``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._dataset_config import DatasetError

__all__ = ["EpisodeInfo", "LeRobotDir", "SUPPORTED_VERSIONS"]

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
"""LeRobot ``codebase_version`` values this reader understands."""

_FRAME_COLUMNS = ("episode_index", "frame_index", "index", "task_index", "timestamp")


@dataclass(frozen=True)
class EpisodeInfo:
    """Where one episode's frames are."""

    index: int
    """``episode_index``."""
    length: int
    """Frames in the episode."""
    data_file: str
    """Parquet file (relative to the root) holding its frames."""
    videos: dict[str, tuple[str, float]]
    """Camera key -> (video file relative to the root, timestamp of the episode's first frame in it)."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class LeRobotDir:
    """A LeRobot dataset on local disk: metadata, tasks, statistics, frame rows, and decoded camera frames."""

    def __init__(self, root: str | Path) -> None:
        try:
            import av  # noqa: F401  (video frames)
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DatasetError(f"reading a LeRobot dataset needs pyarrow and av ({e}); install them with "
                               "pip install 'actstore[dataset]'") from e

        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not self.root.is_dir():
            raise DatasetError(f"dataset path {str(self.root)!r} is not a directory; pass the root of a LeRobot "
                               "dataset (the folder holding meta/info.json)")
        if not info_path.is_file():
            raise DatasetError(f"{str(self.root)!r} is not a LeRobot dataset: no meta/info.json in it; pass the "
                               "dataset's root folder (holding meta/, data/ and videos/)")
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {str(info_path)!r} as JSON: {e}") from e
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetError(f"{str(info_path)!r} has codebase_version {self.version!r}; supported versions are "
                               f"{list(SUPPORTED_VERSIONS)} (convert older datasets with lerobot's converters)")
        for key in ("features", "fps", "data_path"):
            if key not in self.info:
                raise DatasetError(f"{str(info_path)!r} has no {key!r}; it is not a LeRobot {self.version} info.json")
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.fps = float(self.info["fps"])
        meta = self.root / "meta"
        if self.version == "v3.0":
            tasks = pq.read_table(meta / "tasks.parquet")
            index_col = next((c for c in ("task", "__index_level_0__") if c in tasks.column_names), None)
            if index_col is None or "task_index" not in tasks.column_names:
                raise DatasetError(f"{str(meta / 'tasks.parquet')!r} has columns {tasks.column_names}; expected "
                                   "the task strings (index) and task_index")
            self.tasks = dict(zip(tasks.column("task_index").to_pylist(), tasks.column(index_col).to_pylist(),
                                  strict=True))
            self.episodes = self._episodes_v3(pq)
        else:
            self.tasks = {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(meta / "tasks.jsonl")}
            self.episodes = self._episodes_v2()
        self._table_cache: tuple[str, dict[str, Any]] | None = None

    # -- metadata -----------------------------------------------------------------------------------------------

    @property
    def camera_keys(self) -> list[str]:
        """Features holding camera frames (stored as images or as videos)."""
        return [k for k, f in self.features.items() if f.get("dtype") in ("image", "video")]

    def _episodes_v2(self) -> dict[int, EpisodeInfo]:
        chunks = int(self.info.get("chunks_size", 1000))
        out = {}
        for r in _read_jsonl(self.root / "meta" / "episodes.jsonl"):
            ep = int(r["episode_index"])
            chunk = ep // chunks
            videos = {}
            if self.info.get("video_path"):
                for key in self.camera_keys:
                    if self.features[key]["dtype"] == "video":
                        videos[key] = (self.info["video_path"].format(episode_chunk=chunk, video_key=key,
                                                                      episode_index=ep), 0.0)
            out[ep] = EpisodeInfo(ep, int(r["length"]), self.info["data_path"].format(episode_chunk=chunk,
                                                                                        episode_index=ep), videos)
        return out

    def _episodes_v3(self, pq: Any) -> dict[int, EpisodeInfo]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{str(self.root)!r}: no meta/episodes/chunk-*/file-*.parquet (LeRobot v3.0 layout)")
        out = {}
        for f in files:
            for r in pq.read_table(f).to_pylist():
                ep = int(r["episode_index"])
                videos = {}
                for key in self.camera_keys:
                    if self.features[key]["dtype"] == "video":
                        videos[key] = (self.info["video_path"].format(
                            video_key=key, chunk_index=int(r[f"videos/{key}/chunk_index"]),
                            file_index=int(r[f"videos/{key}/file_index"])), float(r[f"videos/{key}/from_timestamp"]))
                out[ep] = EpisodeInfo(ep, int(r["length"]), self.info["data_path"].format(
                    chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"])), videos)
        return dict(sorted(out.items()))

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """Statistics of feature ``key`` (mean, std, min, max, and q01 / q99 where the dataset has them).

        ``meta/stats.json`` when present, else v2.1's per-episode ``meta/episodes_stats.jsonl`` aggregated over all
        episodes (count-weighted mean, pooled variance, min of mins, max of maxes).
        """
        path = self.root / "meta" / "stats.json"
        if path.is_file():
            stats = json.loads(path.read_text(encoding="utf-8"))
            if key not in stats:
                raise DatasetError(f"{str(path)!r} has no statistics for {key!r}; it has {sorted(stats)}")
            return {k: np.asarray(v, dtype=np.float64) for k, v in stats[key].items()}
        per_ep = self.root / "meta" / "episodes_stats.jsonl"
        if not per_ep.is_file():
            raise DatasetError(f"{str(self.root)!r} has neither meta/stats.json nor meta/episodes_stats.jsonl; pass "
                               "a statistics file or capture without normalisation")
        rows = [r["stats"][key] for r in _read_jsonl(per_ep) if key in r.get("stats", {})]
        if not rows:
            raise DatasetError(f"{str(per_ep)!r} has no statistics for {key!r}")
        count = np.array([float(np.asarray(r["count"]).reshape(-1)[0]) for r in rows])
        mean = np.stack([np.asarray(r["mean"], dtype=np.float64) for r in rows])
        var = np.stack([np.asarray(r["std"], dtype=np.float64) ** 2 for r in rows])
        w = (count / count.sum())[:, None]
        total_mean = (w * mean).sum(0)
        total_var = (w * (var + (mean - total_mean) ** 2)).sum(0)
        return {"mean": total_mean, "std": np.sqrt(total_var),
                "min": np.min(np.stack([np.asarray(r["min"], dtype=np.float64) for r in rows]), 0),
                "max": np.max(np.stack([np.asarray(r["max"], dtype=np.float64) for r in rows]), 0)}

    # -- frames -------------------------------------------------------------------------------------------------

    def _table(self, rel: str, columns: list[str]) -> dict[str, Any]:
        """Columns of one data parquet as Python / numpy objects (the last file read is cached)."""
        if self._table_cache is not None and self._table_cache[0] == rel:
            return self._table_cache[1]
        import pyarrow.parquet as pq

        path = self.root / rel
        if not path.is_file():
            raise DatasetError(f"data file {str(path)!r} named by the dataset's metadata does not exist")
        table = pq.read_table(path, columns=columns)
        out: dict[str, Any] = {c: table.column(c).to_numpy() for c in _FRAME_COLUMNS}
        for c in columns:
            if c not in _FRAME_COLUMNS:
                out[c] = table.column(c).to_pylist()
        self._table_cache = (rel, out)
        return out

    def read_frames(self, episode: int, frames: np.ndarray, columns: list[str]) -> dict[str, Any]:
        """Rows ``frames`` (frame_index values) of one episode: the index columns plus ``columns`` (in order)."""
        ep = self.episodes[episode]
        table = self._table(ep.data_file, list(dict.fromkeys([*_FRAME_COLUMNS, *columns])))
        rows_of_ep = np.flatnonzero(table["episode_index"] == episode)
        by_frame = dict(zip(table["frame_index"][rows_of_ep].tolist(), rows_of_ep.tolist(), strict=True))
        missing = [int(f) for f in frames if int(f) not in by_frame]
        if missing:
            raise DatasetError(f"episode {episode} in {ep.data_file!r} has no frame_index {missing[0]} (metadata says "
                               f"{ep.length} frames)")
        pos = np.array([by_frame[int(f)] for f in frames], dtype=np.int64)
        out: dict[str, Any] = {c: table[c][pos] for c in _FRAME_COLUMNS}
        for c in columns:
            if c not in _FRAME_COLUMNS:
                out[c] = [table[c][i] for i in pos]
        return out

    def decode_image(self, cell: dict[str, Any]) -> np.ndarray:
        """An ``image`` feature cell (``{bytes, path}``) as (H, W, 3) uint8 RGB."""
        import io

        from PIL import Image

        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data:
            img = Image.open(io.BytesIO(data))
        elif isinstance(cell, dict) and cell.get("path"):
            img = Image.open(self.root / cell["path"])
        else:
            raise DatasetError(f"image cell holds neither bytes nor a path: {str(cell)[:80]}")
        return np.asarray(img.convert("RGB"))

    def decode_video(self, key: str, episode: int, timestamps: np.ndarray) -> np.ndarray:
        """Frames of camera ``key`` at the episode's ``timestamps`` (seconds): (N, H, W, 3) uint8 RGB.

        Decodes from the keyframe before the first timestamp up to the last one and takes, for each timestamp, the
        frame whose presentation time is nearest; a frame further than half a frame period away is an error.
        """
        import av

        rel, offset = self.episodes[episode].videos[key]
        path = self.root / rel
        if not path.is_file():
            raise DatasetError(f"video file {str(path)!r} for camera {key!r}, episode {episode} does not exist")
        want = np.asarray(timestamps, dtype=np.float64) + offset
        order = np.argsort(want)
        out: list[np.ndarray | None] = [None] * len(want)
        tol = 0.5 / self.fps
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            tb = float(stream.time_base)
            container.seek(max(int((want[order[0]] - tol) / tb), 0), stream=stream, backward=True)
            j = 0
            prev: tuple[float, Any] | None = None
            for frame in container.decode(stream):
                t = float(frame.pts) * tb
                while j < len(order) and t >= want[order[j]]:
                    # the wanted time lies between prev and this frame: take the nearer one
                    cand = (t, frame) if prev is None or abs(t - want[order[j]]) <= abs(prev[0] - want[order[j]]) \
                        else prev
                    if abs(cand[0] - want[order[j]]) > tol:
                        raise DatasetError(f"{str(path)!r}: no frame within {tol:.4f} s of {want[order[j]]:.4f} s "
                                           f"(camera {key!r}, episode {episode}); nearest is {cand[0]:.4f} s")
                    out[order[j]] = cand[1].to_ndarray(format="rgb24")
                    j += 1
                if j == len(order):
                    break
                prev = (t, frame)
            while j < len(order) and prev is not None and abs(prev[0] - want[order[j]]) <= tol:
                out[order[j]] = prev[1].to_ndarray(format="rgb24")
                j += 1
        if j < len(order):
            raise DatasetError(f"{str(path)!r} ends before {want[order[j]]:.4f} s (camera {key!r}, episode {episode})")
        return np.stack(out)  # type: ignore[arg-type]
