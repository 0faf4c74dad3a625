"""The encode threads' block buffers come from the heap once ``keep_blocks_in_heap`` ran: measured as the page
faults of real block encodes in a fresh interpreter (the setting is per process), before and after."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actstore.write._malloc import keep_blocks_in_heap

_PROBE = r"""
import json, resource
import numpy as np
from actstore.format._codec import BlockCodec
from actstore.write._malloc import keep_blocks_in_heap

rng = np.random.default_rng(0)
block = np.empty((256, 2048), np.uint16)  # kept; filled row by row: no large temporary is freed before the probe
for row in block:
    row[:] = rng.standard_normal(2048, dtype=np.float32).view(np.uint32) >> 16
codec = BlockCodec("lz4", np.dtype(np.uint16), block_bytes=block.nbytes)

def faults():
    codec.encode_parts(block)  # warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        codec.encode_parts(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

first = faults()
done = keep_blocks_in_heap()
print(json.dumps({"before": first, "after": faults(), "done": done}))
"""


def test_keep_blocks_in_heap_is_idempotent() -> None:
    first = keep_blocks_in_heap()
    assert keep_blocks_in_heap() is first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's dynamic mmap threshold")
def test_encoded_blocks_stop_page_faulting() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=300)
    got = json.loads(out.stdout)
    if not got["done"]:
        pytest.skip("not glibc")
    # 40 encodes of a 1 MiB block: ~256 faults each through fresh maps, a few in all once they reuse the heap
    assert got["before"] > 40 * 100 and got["after"] < got["before"] / 10, got
