"""``Recorder``: forward hooks on plain module paths that stream selected activations into a store writer.

Inside ``with Recorder(model, writer, sites) as rec:`` each hooked module gets one forward hook
(``register_forward_hook(..., with_kwargs=True)``); the hooks are removed in ``finally``. Every model call is wrapped
in ``with rec.batch(ctx, progress=...):``, which writes the per-sample table, numbers the expert's denoising steps
0..num_steps-1, and commits the batch to the store when the block ends.

Before anything is stored the hook checks the module's output against the batch (``capture._outputs``): a
``(B, T, D)`` tensor, or a tuple / ModelOutput whose element 0 is the one such tensor, unless the site's
``output_index`` / ``output_key`` / ``batch_first`` say where and how to read it; the selector then checks ``T``
against the batch context. Anything else raises ``SiteOutputError`` and the batch is rolled back. Modules with a
``batch_first=False`` attribute are refused when the Recorder is built unless their site declares the layout. A
forward pass outside ``rec.batch(...)`` records nothing and says so once (``warnings.warn``).

The hook body only selects, copies and enqueues:

- CPU: the selected rows are gathered with one copy into a reused host buffer and handed to ``writer.append``
  (the writer compresses and writes on its own thread and gives the buffer back through ``done``).
- CUDA: the selected token range is copied into a reused pinned buffer on a side stream, with a CUDA event marking
  completion. Finished copies are handed to the writer from later hooks and at the end of the batch; the model's
  stream never waits for the host unless the pool is full (backpressure, reported once by ``warnings.warn``).

Rows of one role are grouped per denoising step so that one ``writer.append`` carries all of the role's layers.
The AdaRMS conditioning (``adarms_cond`` keyword of the expert layers) is stored once per (sample, step).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import ActStoreError, CaptureConfigError, CaptureError, SiteError, SiteOutputError
from ._outputs import check_cond, check_layout, check_selection, read_output, where
from ._ring import BufferPool
from ._sites import NO_STEP, BatchContext, Selection, Site

__all__ = ["Recorder", "RecorderConfig"]


@dataclass(frozen=True)
class RecorderConfig:
    """How the recorder copies and hands off activations."""

    buffer_bytes: int = 1 << 30
    """Host buffer pool size (pinned on CUDA); when all of it is in flight the model waits (backpressure)."""
    cond_name: str = "adarms"
    """Name of the conditioning table in the store."""
    cond_kwarg: str | None = "adarms_cond"
    """Keyword of the stepped layers' forward that carries the conditioning (None: capture no conditioning)."""
    side_stream: bool = True
    """On CUDA, copy on a side stream (False: copy on the model's stream, still into pinned memory)."""

    def __post_init__(self) -> None:
        if self.buffer_bytes < 1:
            raise CaptureConfigError(f"RecorderConfig.buffer_bytes must be >= 1, got {self.buffer_bytes}")
        if not self.cond_name:
            raise CaptureConfigError("RecorderConfig.cond_name must not be empty")


@dataclass
class _Copy:
    """One layer's (or the conditioning's) copy: the host buffer, its typed view, the keep index, the event."""

    buf: torch.Tensor
    view: torch.Tensor
    keep: np.ndarray | None
    event: Any = None
    finite: torch.Tensor | None = None
    """On CUDA, when the writer counts NaN/Inf: a pinned bool, True once the event has passed if every value of the
    copied range (padding included) was finite, checked on the GPU before the copy."""


@dataclass
class _Packet:
    """All layers of one role for one step (or the conditioning of one step), ready for one writer call."""

    role: str | None  # None: conditioning
    step: int
    rows: dict[str, np.ndarray]
    expected: int
    keep: np.ndarray | None = None
    copies: dict[int, _Copy] = field(default_factory=dict)
    sel: Selection | None = None
    first: int | None = None  # the layer whose selection labelled the rows


class Recorder:
    """Context manager that captures ``sites`` of ``model`` into ``writer`` (an ``actstore.StoreWriter``)."""

    def __init__(self, model: nn.Module, writer: Any, sites: Sequence[Site],
                 config: RecorderConfig | None = None) -> None:
        if not sites:
            raise SiteError("Recorder needs at least one site")
        self.model, self.writer, self.config = model, writer, config or RecorderConfig()
        modules = dict(model.named_modules())
        self._sites_at: dict[str, list[Site]] = {}
        self._role_layers: dict[str, list[int]] = {}
        for s in sites:
            if s.path not in modules:
                raise SiteError(f"no module {s.path!r} in {type(model).__name__} (site layer {s.layer}, role "
                                f"{s.role!r}); {_layer_hint(modules, s.path)}")
            if s.layer in self._role_layers.get(s.role, []):
                raise SiteError(f"site (layer {s.layer}, role {s.role!r}) is given twice")
            if any(o.stepped != s.stepped for o in self._sites_at.get(s.path, [])):
                raise SiteError(f"sites at module {s.path!r} disagree on stepped; a module fires once per step or "
                                "once per call, for all of its sites")
            check_layout(s, modules[s.path])
            self._sites_at.setdefault(s.path, []).append(s)
            self._role_layers.setdefault(s.role, []).append(s.layer)
        self._modules = {p: modules[p] for p in self._sites_at}
        self._handles: list[Any] = []
        self._ctx: BatchContext | None = None
        self._calls: dict[str, int] = {}
        self._open: dict[tuple[str | None, int], _Packet] = {}
        self._pending: deque[_Packet] = deque()
        self._cond_steps: set[int] = set()
        self._seen: set[tuple[str, int, int]] = set()
        self._pool: BufferPool | None = None
        self._stream: Any = None
        self._check_finite = getattr(getattr(writer, "config", None), "nonfinite", "allow") != "allow"
        """Check activations for NaN/Inf on the GPU (the store counts or rejects them; a writer told they are
        finite need not count them on its CPU threads)."""
        self._warned_outside = False
        self.rows_written = 0
        """Activation rows handed to the writer so far (summed over layers)."""
        self.bytes_written = 0
        """Bytes of activations and conditioning handed to the writer so far."""

    @property
    def backpressure_waits(self) -> int:
        """How often a hook had to wait for a free host buffer (0 when the writer kept up)."""
        return 0 if self._pool is None else self._pool.waits

    def reserve(self, nbytes: int, count: int, *, pin: bool | None = None) -> None:
        """Allocate ``count`` host buffers of ``nbytes`` now instead of during the first forwards.

        ``pin`` defaults to whether CUDA is available (pinned buffers are what the CUDA path copies into).
        """
        if self._pool is None:
            pin = torch.cuda.is_available() if pin is None else pin
            self._pool = BufferPool(self.config.buffer_bytes, pin=pin)
        self._pool.reserve(nbytes, count)

    # -- context management -------------------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        try:
            for path, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._make_hook(path), with_kwargs=True))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._drain_all()
        finally:
            self._remove()
            if exc_type is not None:
                self._abandon()

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _abandon(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()  # in-flight copies must land before their buffers are reused
        self._open.clear()
        self._pending.clear()
        self._ctx = None

    @contextmanager
    def batch(self, ctx: BatchContext, progress: dict | None = None) -> Iterator[BatchContext]:
        """Scope of one model call: stores the per-sample table, numbers steps, commits when the block ends."""
        if not self._handles:
            raise CaptureError("Recorder.batch() used outside 'with Recorder(...)'")
        if self._ctx is not None:
            raise CaptureError("Recorder.batch() blocks cannot be nested")
        self._ctx, self._calls, self._cond_steps, self._seen = ctx, dict.fromkeys(self._sites_at, 0), set(), set()
        try:
            extra = {k: v.numpy() for k, v in ctx.extra.items()}
            self.writer.append_samples(
                ctx.sample.numpy(), prompt=ctx.prompt,
                prompt_ids=None if ctx.prompt_ids is None else ctx.prompt_ids.numpy(),
                instruction_mask=None if ctx.prompt_mask is None else ctx.prompt_mask.bool().numpy(), **extra)
            yield ctx
            self._drain_all()
            if self._open:
                missing = {f"{k[0] or self.config.cond_name} step {k[1]}": sorted(
                    set(self._role_layers.get(k[0], [])) - set(p.copies)) for k, p in self._open.items()}
                raise CaptureError(f"some hooks never fired in this batch (missing layers): {missing}")
            self.writer.commit(progress)
        except BaseException:
            self._abandon()
            with suppress(ActStoreError):  # a failed writer reports itself on close; keep the original error
                self.writer.rollback()  # the batch's rows already handed over are forgotten, not committed
            raise
        finally:
            self._ctx = None

    # -- the hook -------------------------------------------------------------------------------------------

    def _make_hook(self, path: str):
        sites = self._sites_at[path]
        stepped = sites[0].stepped

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            ctx = self._ctx
            if ctx is None:  # a call outside rec.batch() (e.g. warm-up) is not recorded
                self._warn_outside(path)
                return
            B = ctx.batch_size
            read: dict[tuple, torch.Tensor] = {}
            for site in sites:  # check every site's output before anything of this call is stored
                how = (site.output_index, site.output_key, site.batch_first)
                if how not in read:  # never keep the autograd graph
                    read[how] = read_output(output, site, type(module).__name__, B).detach()
            step = NO_STEP
            if stepped:
                step = self._calls[path]
                self._calls[path] = step + 1
                if self.config.cond_kwarg is not None and step not in self._cond_steps:
                    cond_BC = kwargs.get(self.config.cond_kwarg)
                    if cond_BC is not None:
                        cond_BC = check_cond(cond_BC, self.config.cond_kwarg, path, B)
                        self._cond_steps.add(step)
                        self._capture_cond(cond_BC.detach(), step, ctx)
            for site in sites:
                acts_BTD = read[(site.output_index, site.output_key, site.batch_first)]
                self._capture(site, step, acts_BTD, self._select(site, type(module).__name__, acts_BTD, ctx), ctx)
            if self._pending:
                self._drain(block=False)

        return hook

    def _warn_outside(self, path: str) -> None:
        if not self._warned_outside:
            self._warned_outside = True
            warnings.warn(f"Recorder: module {path!r} ran outside 'with rec.batch(ctx):' and nothing was recorded "
                          "(said once per Recorder); wrap each model call to record in rec.batch(...), and run "
                          "warm-up calls before entering the Recorder", stacklevel=_caller_level())

    @staticmethod
    def _select(site: Site, module_name: str, acts_BTD: torch.Tensor, ctx: BatchContext) -> Selection:
        """The site's selection for this output; a selector's refusal is reported with the site and the shape."""
        B, T, D = acts_BTD.shape
        try:
            sel = site.selector(int(T), ctx)
            check_selection(sel, int(T), int(B))
        except SiteError as e:
            raise SiteOutputError(f"{where(site, module_name)}: output (B={B}, T={T}, D={D}): {e}") from e
        return sel

    def _capture(self, site: Site, step: int, acts_BTD: torch.Tensor, sel: Selection, ctx: BatchContext) -> None:
        key = (site.role, step)
        if (site.role, step, site.layer) in self._seen:
            raise CaptureError(f"layer {site.layer} (role {site.role!r}, step {step}) fired twice in one batch; "
                               "run the model once per Recorder.batch()")
        self._seen.add((site.role, step, site.layer))
        pkt = self._open.get(key)
        if pkt is None:
            rows, keep = sel.rows(ctx.sample)
            rows["step"] = np.full(rows["sample"].shape, step, dtype=np.int64)
            # per-sample context columns (episode, frame, task, ...) on every row, so row filters can use them
            T = max(sel.stop - sel.start, 1)
            b = np.arange(len(rows["sample"])) // T if keep is None else keep // T
            for name, col_B in ctx.extra.items():
                rows[name] = col_B.numpy().astype(np.int64)[b]
            pkt = self._open[key] = _Packet(site.role, step, rows, len(self._role_layers[site.role]), keep, sel=sel,
                                            first=site.layer)
        elif not _same_selection(pkt.sel, sel):  # the packet's rows were labelled from another layer's selection
            raise SiteOutputError(
                f"{where(site, site.path)}: selected tokens [{sel.start}, {sel.stop}) with its own mask, but layer "
                f"{pkt.first} of role {site.role!r} selected [{pkt.sel.start}, {pkt.sel.stop}) in this step; the "
                "layers of one role share their rows and must select the same tokens")
        pkt.copies[site.layer] = self._copy(acts_BTD, sel.start, sel.stop, pkt.keep)
        if len(pkt.copies) == pkt.expected:
            self._pending.append(self._open.pop(key))

    def _capture_cond(self, cond_BC: torch.Tensor, step: int, ctx: BatchContext) -> None:
        rows = {"sample": ctx.sample.numpy().astype(np.int64),
                "step": np.full(ctx.batch_size, step, dtype=np.int64)}
        pkt = _Packet(None, step, rows, 1)
        pkt.copies[0] = self._copy(cond_BC.reshape(ctx.batch_size, 1, -1), 0, 1, None)  # (B, C), checked
        self._pending.append(pkt)

    def _acquire(self, nbytes: int) -> torch.Tensor:
        """A pooled buffer of ``nbytes``; refused at once when the pool can never give it: the copies of the steps
        still being captured (a role's layers go to the writer together) hold the rest of ``buffer_bytes``, and
        none of them comes back before this one is taken (waiting would only end in the pool's timeout)."""
        pool = self._pool
        assert pool is not None
        held = sum(c.buf.numel() for p in self._open.values() for c in p.copies.values())
        if held and held + nbytes > pool.capacity_bytes:
            raise CaptureConfigError(
                f"RecorderConfig.buffer_bytes={pool.capacity_bytes} cannot hold one step's copies of a role's layers: "
                f"{held + nbytes} bytes are needed at once (the layers of a role are handed to the writer together); "
                f"raise buffer_bytes to at least {held + nbytes} (a few steps' worth keeps the model from waiting)")
        return pool.acquire(nbytes, self._drain_one)

    def _copy(self, acts_BTD: torch.Tensor, start: int, stop: int, keep: np.ndarray | None) -> _Copy:
        """Copy tokens [start, stop) into a pooled host buffer; on CUDA asynchronously on the side stream.

        ``keep`` indexes rows of the (B * (stop - start), D) range; None keeps all of them.
        """
        src_BTD = acts_BTD[:, start:stop]
        B, T, D = src_BTD.shape
        cuda = src_BTD.is_cuda
        if self._pool is None:
            self._pool = BufferPool(self.config.buffer_bytes, pin=cuda)
        itemsize = src_BTD.element_size()
        if not cuda and keep is not None:  # CPU: gather only the kept rows, one copy
            n = len(keep)
            buf = self._acquire(n * D * itemsize)
            view = buf[: n * D * itemsize].view(src_BTD.dtype).view(n, D)
            if acts_BTD.is_contiguous():  # index the whole output: no intermediate copy of the range
                full_T = acts_BTD.shape[1]
                flat, idx = acts_BTD.view(-1, D), (keep // T) * full_T + start + keep % T
            else:
                flat, idx = src_BTD.reshape(B * T, D), keep
            torch.index_select(flat, 0, torch.from_numpy(idx), out=view)
            return _Copy(buf, view, None)
        buf = self._acquire(B * T * D * itemsize)
        view = buf[: B * T * D * itemsize].view(src_BTD.dtype).view(B, T, D)
        if not cuda:
            view.copy_(src_BTD)
            return _Copy(buf, view.view(B * T, D), None)
        if self._stream is None and self.config.side_stream:
            self._stream = torch.cuda.Stream(device=src_BTD.device)
        stream = self._stream or torch.cuda.current_stream(src_BTD.device)
        stream.wait_stream(torch.cuda.current_stream(src_BTD.device))
        finite = None
        with torch.cuda.stream(stream):
            if self._check_finite:  # one fused kernel and a one-byte copy, before the copy on the same stream
                finite = torch.empty((), dtype=torch.bool, pin_memory=True)
                finite.copy_(torch.isfinite(src_BTD).all(), non_blocking=True)
            view.copy_(src_BTD, non_blocking=True)
            src_BTD.record_stream(stream)
            event = torch.cuda.Event()
            event.record(stream)
        return _Copy(buf, view.view(B * T, D), keep, event, finite)

    # -- hand-off to the writer -----------------------------------------------------------------------------

    def _drain_one(self) -> bool:
        """Hand the oldest finished packet to the writer, waiting for its copies; False when none is pending."""
        if not self._pending:
            return False
        self._emit(self._pending.popleft(), block=True)
        return True

    def _drain(self, block: bool) -> None:
        while self._pending:
            pkt = self._pending[0]
            if not block and not all(c.event is None or c.event.query() for c in pkt.copies.values()):
                return
            self._emit(self._pending.popleft(), block=True)

    def _drain_all(self) -> None:
        self._drain(block=True)

    def _emit(self, pkt: _Packet, block: bool) -> None:
        pool = self._pool
        assert pool is not None
        acts: dict[int, torch.Tensor] = {}
        owned: list[torch.Tensor] = []
        for layer, c in pkt.copies.items():
            if c.event is not None and block:
                c.event.synchronize()
            if c.keep is not None:  # CUDA path: drop padding on the host, give the pinned buffer back at once
                acts[layer] = c.view[torch.from_numpy(c.keep)]
                pool.release(c.buf)
            else:
                acts[layer] = c.view
                owned.append(c.buf)

        def done(bufs=tuple(owned)) -> None:
            for b in bufs:
                pool.release(b)

        # the writer is told only what the GPU checked (every layer finite); otherwise its threads count
        checked = {"finite": True} if all(c.finite is not None and bool(c.finite) for c in pkt.copies.values()) else {}
        rows = pkt.rows
        nbytes = sum(a.numel() * a.element_size() for a in acts.values())
        if pkt.role is None:
            self.writer.append_cond(self.config.cond_name, rows, acts[0], done=done, **checked)
        else:
            self.writer.append(pkt.role, rows, acts, done=done, **checked)
            self.rows_written += len(rows["sample"]) * len(acts)
        self.bytes_written += nbytes


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside torch and this package (the model code that called the module)."""
    inside = (os.path.dirname(torch.__file__), os.path.dirname(__file__))
    frame, level = sys._getframe(2), 2  # noqa: SLF001 (CPython API); the caller of the warnings.warn caller
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _same_selection(a: Selection | None, b: Selection) -> bool:
    if a is None or (a.start, a.stop) != (b.start, b.stop) or (a.keep_BT is None) != (b.keep_BT is None):
        return False
    return a.keep_BT is None or a.keep_BT is b.keep_BT or torch.equal(a.keep_BT.bool(), b.keep_BT.bool())


def _layer_hint(modules: dict[str, nn.Module], path: str) -> str:
    """'<stack> layers are 0..17' for a path like '...layers.40', else a generic hint."""
    head, _, tail = path.rpartition(".")
    if tail.isdigit() and head in modules:
        n = len(list(modules[head].children()))
        return f"layers under {head!r} are 0..{n - 1}"
    return "module paths are as listed by model.named_modules()"
