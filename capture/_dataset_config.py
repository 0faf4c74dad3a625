"""``--dataset``: which LeRobot-format dataset frames a capture runs over, and how they become model inputs.

A frozen dataclass validated without I/O and without importing torch (the CLI's ``--help`` stays fast); the reading
is ``_lerobot_format``, the batching and preprocessing ``_dataset``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ._errors import CaptureConfigError

__all__ = ["DEFAULT_CAMERAS", "EMPTY_CAMERA", "DatasetConfig", "DatasetError", "parse_ranges"]

DEFAULT_CAMERAS: tuple[str, ...] = ("observation.images.image", "observation.images.wrist_image")
"""LIBERO's cameras in the LeRobot format: the third-person view and the wrist view (openpi's base_0_rgb and
left_wrist_0_rgb)."""

EMPTY_CAMERA = "-"
"""A ``--cameras`` entry that feeds the model's slot an image of -1 with a False mask (openpi's absent right wrist)."""


class DatasetError(CaptureConfigError):
    """A dataset path, camera key, episode range or file that is not a valid LeRobot dataset (or selection of it)."""


def parse_ranges(spec: str) -> list[tuple[int, int]]:
    """``"0-9,20"`` -> ``[(0, 9), (20, 20)]`` (inclusive); a typed error for anything else."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise DatasetError(f"--episodes {spec!r}: {part!r} is not 'N' or 'A-B' (e.g. '0-9,20')") from None
        if a < 0 or b < a:
            raise DatasetError(f"--episodes {spec!r}: range {part!r} must satisfy 0 <= A <= B")
        out.append((a, b))
    return out


@dataclass(frozen=True)
class DatasetConfig:
    """A LeRobot-format dataset to capture over, one sample per selected frame (default: synthetic observations)."""

    dataset: str | None = None
    """Root of a local LeRobot dataset, v2.0 / v2.1 / v3.0 (the folder holding meta/info.json), e.g. LIBERO."""
    episodes: str | None = None
    """Episodes of --dataset to capture, as inclusive ranges, e.g. 0-9,20 (default: all)."""
    frame_stride: int = 1
    """Capture every n-th frame of each episode (frame_index % n == 0)."""
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    """Dataset camera keys fed to the model's camera slots in order; - feeds an empty, masked slot."""
    state_key: str = "observation.state"
    """Dataset feature fed as the robot state."""
    normalization: Literal["quantile", "mean_std", "none"] = "quantile"
    """State normalisation with the dataset's statistics (openpi and lerobot use quantile for pi0.5)."""
    stats_path: str | None = None
    """Statistics JSON used instead of the dataset's own (lerobot's stats.json, or openpi's norm_stats.json)."""
    tokenizer: str | None = None
    """Local Hugging Face tokenizer folder for the prompts (default: an offline word hash, enough for random models)."""
    prompt_len: int = 48
    """Prompt tokens per sample, right-padded (a longer prompt is an error)."""

    def __post_init__(self) -> None:
        for name in ("frame_stride", "prompt_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "frame_stride" else 2):
                raise DatasetError(f"--{name.replace('_', '-')} must be an integer >= "
                                   f"{1 if name == 'frame_stride' else 2}, got {value!r}")
        if not self.cameras:
            raise DatasetError("--cameras must name at least one camera key")
        if self.normalization not in ("quantile", "mean_std", "none"):
            raise DatasetError(f"--normalization {self.normalization!r}: choices are quantile, mean_std, none")
        if self.episodes is not None:
            parse_ranges(self.episodes)

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the selection."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
