"""The capture run's configuration: small frozen dataclasses, validated without I/O, parsed by ``python -m capture``.

``RunConfig`` nests ``ModelConfig`` (which model), ``InputConfig`` (which observations, how many),
``CaptureConfig`` (which layers and roles) and ``OutputConfig`` (where the store goes). The CLI flattens them
(``--checkpoint-path``, ``--layers``, ``--output-dir``, ...). This module imports neither torch nor the store, so
``python -m capture --help`` starts fast; choices that live in other modules are repeated here as ``Literal``s and
a test checks that they agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ._dataset_config import DatasetConfig
from ._errors import CaptureConfigError

__all__ = ["CODEC_NAMES", "MODEL_NAMES", "CaptureConfig", "InputConfig", "ModelConfig", "OutputConfig", "RunConfig",
           "flag", "is_url"]

ModelName = Literal["reference", "transformers-pi0", "openpi", "lerobot", "factory", "hf"]
MODEL_NAMES: tuple[str, ...] = ModelName.__args__  # type: ignore[attr-defined]
"""``--model`` choices: ``capture.MODELS`` plus ``hf`` (any Hugging Face causal LM, loaded by ``_hf``)."""
Codec = Literal["lz4", "zstd", "bytesplit", "none"]
CODEC_NAMES: tuple[str, ...] = Codec.__args__  # type: ignore[attr-defined]
"""``--codec`` choices: ``actstore.CODECS``."""
STORE_SUFFIXES = {".zarr": "zarr", ".h5": "hdf5", ".hdf5": "hdf5"}
"""A path with one of these suffixes is the store itself; the suffix decides the backend."""


def flag(name: str) -> str:
    """The CLI flag of a config field: ``num_steps`` -> ``--num-steps``."""
    return "--" + name.replace("_", "-")


def is_url(path: str) -> bool:
    """True for ``scheme://...`` paths other than ``file://`` (object storage through fsspec)."""
    return "://" in path and not path.startswith("file://")


def store_suffix(path: str) -> str | None:
    """``.zarr`` / ``.h5`` / ``.hdf5`` when ``path`` names a store itself, else None."""
    tail = path.rstrip("/").rsplit("/", 1)[-1].lower()
    return next((s for s in STORE_SUFFIXES if tail.endswith(s) and len(tail) > len(s)), None)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CaptureConfigError(f"{flag(name)} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to capture from and how to load it."""

    model: ModelName = "reference"
    """reference (built-in random pi0.5), transformers-pi0, openpi, lerobot, factory (see --model-factory) or hf (a Hugging Face causal LM from --checkpoint-path)."""
    checkpoint_path: str | None = None
    """Weights to load: reference: a state-dict file; transformers-pi0 / lerobot / hf: a directory (or hub id)."""
    model_factory: str | None = None
    """module:function called as fn(checkpoint_path, seed), returning a torch model (implies --model factory)."""
    layer_path: str | None = None
    """Module path of decoder layer i for models capture does not know, e.g. transformer.h.{i} (GPT-2) or model.layers.{i} (Llama); default: the model's decoder ModuleList, found by its length."""
    device: str = "auto"
    """Device to run the model on (auto: cuda when available, else cpu)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Model parameter dtype."""

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise CaptureConfigError(f"--model {self.model!r} is not a model; models are {list(MODEL_NAMES)}")
        if self.model_factory is not None and self.model not in ("reference", "factory"):
            raise CaptureConfigError(f"--model-factory {self.model_factory!r} conflicts with --model {self.model}: "
                                     "pass one of them")
        if self.model_factory is not None and ":" not in self.model_factory:
            raise CaptureConfigError(f"--model-factory {self.model_factory!r}: expected module:function")
        if self.model == "factory" and self.model_factory is None:
            raise CaptureConfigError("--model factory needs --model-factory module:function")
        if self.model == "hf" and not self.checkpoint_path:
            raise CaptureConfigError("--model hf needs --checkpoint-path (a directory written by save_pretrained, "
                                     "or a hub id already in the local cache)")
        if self.layer_path is not None and "{i}" not in self.layer_path:
            raise CaptureConfigError(f"--layer-path {self.layer_path!r} must contain {{i}} where the layer index "
                                     "goes, e.g. transformer.h.{i}")

    @property
    def name(self) -> str:
        """The model name after ``--model-factory`` (which implies ``factory``)."""
        return "factory" if self.model_factory is not None else self.model


@dataclass(frozen=True)
class InputConfig:
    """Which observations go through the model, and how many."""

    batch_size: int = 8
    """Samples per batch."""
    max_batches: int | None = None
    """Batches to capture in total (a resumed run continues up to this number); default 8, or with --dataset every selected frame."""
    batch_factory: str | None = None
    """module:function called as fn(batch_size=, seed=), returning an iterable of capture.Observation (default: synthetic observations, LIBERO-style prompts)."""
    def __post_init__(self) -> None:
        _positive(self, "batch_size", *(["max_batches"] if self.max_batches is not None else []))
        if self.batch_factory is not None and ":" not in self.batch_factory:
            raise CaptureConfigError(f"--batch-factory {self.batch_factory!r}: expected module:function")


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture."""

    layers: tuple[int, ...] = (6, 10, 14)
    """Decoder layer indices to capture."""
    roles: tuple[str, ...] = ("decision", "instruction")
    """Token roles: decision (expert action tokens, per step), instruction (prompt tokens), full (every non-pad prefix token; for plain decoders every token), suffix (every expert token, per step)."""
    num_steps: int = 10
    """Denoising steps per sample (pi0 / pi0.5)."""

    def __post_init__(self) -> None:
        _positive(self, "num_steps")
        if not self.layers or not self.roles:
            raise CaptureConfigError(f"--layers and --roles need at least one value, got {list(self.layers)} and "
                                     f"{list(self.roles)}")
        bad = [x for x in self.layers if not isinstance(x, int) or isinstance(x, bool) or x < 0]
        if bad:
            raise CaptureConfigError(f"--layers must be layer indices >= 0, got {bad}")
        for name, values in (("layers", self.layers), ("roles", self.roles)):
            if len(set(values)) != len(values):
                raise CaptureConfigError(f"{flag(name)} lists a value twice: {list(values)}")


@dataclass(frozen=True)
class OutputConfig:
    """Where the store goes."""

    output_dir: str = "runs"
    """Directory of runs, or the store itself when it ends in .zarr / .h5 (the suffix decides the backend); may be a URL such as s3://bucket/run.zarr (endpoint and credentials from the environment, e.g. AWS_ENDPOINT_URL)."""
    backend: Literal["zarr", "hdf5"] | None = None
    """Store backend when --output-dir is a directory (default zarr); a .zarr / .h5 path decides by itself."""
    codec: Codec = "lz4"
    """Block codec of a new store (a resumed store keeps its own): lz4 fast, bytesplit smaller, none fastest."""
    direct_io: bool = False
    """Write chunk files with O_DIRECT, past the page cache (local Zarr on Linux): faster on machines whose new page-cache memory is slow (a fresh virtual machine), slower where the disk is the limit; see docs/benchmarks.md, Writer ingest."""
    auto_timestamp: bool = True
    """Name a store in a directory <output-dir>/<timestamp>.<ext> (else <output-dir>/capture.<ext>)."""
    resume: bool = False
    """Continue the store after its last committed batch (with --auto-timestamp in a directory: the newest store); the capture config must match the recorded one."""
    overwrite: bool = False
    """Replace an existing store."""
    part: str | None = None
    """i/N: capture batches i, i+N, i+2N, ... into part i of an N-part store (default under torchrun: RANK/WORLD_SIZE); each part resumes on its own."""

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise CaptureConfigError("--output-dir must not be empty")
        if self.resume and self.overwrite:
            raise CaptureConfigError("--resume and --overwrite exclude each other: continue the store or replace it")
        suffix = store_suffix(self.output_dir)
        if suffix is not None and self.backend is not None and STORE_SUFFIXES[suffix] != self.backend:
            stem = self.output_dir.rstrip("/")[: -len(suffix)]
            other = stem + (".h5" if self.backend == "hdf5" else ".zarr")
            raise CaptureConfigError(
                f"--backend {self.backend} conflicts with --output-dir {self.output_dir!r}: the {suffix} suffix "
                f"decides the backend ({STORE_SUFFIXES[suffix]}); drop --backend or name the store {other!r}")
        if is_url(self.output_dir) and self.store_backend == "hdf5":
            raise CaptureConfigError(f"--output-dir {self.output_dir!r}: HDF5 stores are local files; object "
                                     "storage takes a .zarr store")
        if self.part is not None:
            i, _, n = self.part.partition("/")
            if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
                raise CaptureConfigError(f"--part {self.part!r}: expected i/N with 0 <= i < N, e.g. 0/2")

    @property
    def store_backend(self) -> str:
        """The backend that will be written: the path's suffix decides, else ``--backend``, else zarr."""
        suffix = store_suffix(self.output_dir)
        return STORE_SUFFIXES[suffix] if suffix else (self.backend or "zarr")


@dataclass(frozen=True)
class RunConfig:
    """Capture activations of a pi0 / pi0.5 policy (or any torch model) into an actstore store.

    With no arguments: the built-in reference pi0.5 policy (random weights), synthetic observations (random images, LIBERO-style instructions), layers 6/10/14, roles decision and instruction, 8 batches of 8, into ./runs/<timestamp>.zarr. Any Hugging Face causal LM: --model hf --checkpoint-path DIR --roles full (--layer-path transformer.h.{i} names GPT-2's layers; found automatically when omitted).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    data: DatasetConfig = field(default_factory=DatasetConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 0
    """Seed of the random model weights and of the synthetic observations."""
    progress_interval: float = 0.5
    """Seconds between progress-bar refreshes."""
    quiet: bool = False
    """No progress bar and no summary table."""

    def __post_init__(self) -> None:
        if self.data.dataset is not None and self.inputs.batch_factory is not None:
            raise CaptureConfigError("--dataset and --batch-factory are two sources of observations: pass one")
        if self.output.part is not None and self.output.store_backend != "zarr":
            raise CaptureConfigError(f"--part {self.output.part} needs a zarr store (one HDF5 file has one writer)")

    @classmethod
    def from_flat(cls, **kwargs: Any) -> RunConfig:
        """Build from flat keyword arguments named like the CLI flags (``num_steps=3``, ``output_dir=...``)."""
        groups: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        owner = {f.name: group for group, kind in _GROUPS.items() for f in dataclasses.fields(kind)}
        for key, value in kwargs.items():
            value = tuple(value) if isinstance(value, list) else value
            if key in owner:
                groups.setdefault(owner[key], {})[key] = value
            elif key in _TOP:
                top[key] = value
            else:
                raise CaptureConfigError(f"unknown capture option {key!r}; options are {sorted([*owner, *_TOP])}")
        return cls(**{name: _GROUPS[name](**vals) for name, vals in groups.items()}, **top)

    def flat(self) -> dict[str, Any]:
        """Every option by its flag name (without ``--``), as JSON-ready values."""
        out: dict[str, Any] = {}
        for name in _GROUPS:
            for key, value in dataclasses.asdict(getattr(self, name)).items():
                out[key] = list(value) if isinstance(value, tuple) else value
        return {**out, **{key: getattr(self, key) for key in _TOP}}


_GROUPS: dict[str, type] = {"model": ModelConfig, "inputs": InputConfig, "data": DatasetConfig,
                            "capture": CaptureConfig, "output": OutputConfig}

_TOP = ("seed", "progress_interval", "quiet")
"""``RunConfig``'s own (not nested) fields."""
