#!/usr/bin/env bash
# The GPU checks on a lent H100/H200 (see README "Benchmarks"), in two stages that each fit one device call
# (10 minutes): `bash benchmarks/gpu_run.sh 1` (tests, sustained capture, writer ingest), then `... 2` (loader,
# codec, gather). Each step is time-boxed so that a slow one cannot take the rest of the call. Wheels the image
# lacks are carried in .whl/, the repository is on PYTHONPATH. Logs and JSON go under $OUT (default benchmarks/results/).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
STAGE=${1:-1}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_env.txt"
python3 -c "import torch, zarr, numcodecs; print('torch', torch.__version__, 'zarr', zarr.__version__)" | tee -a "$OUT/gpu_env.txt"
if [ "$STAGE" = 1 ]; then
timeout -k 5 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_loader.py tests/test_capture_recorder.py tests/test_capture_reference.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
# sustained capture (issue 13 item 1): 100 forwards of the Gemma-2B shape, every row stored; and the NaN/Inf check on the GPU against none (item 2)
timeout -k 5 210 python3 benchmarks/bench_capture_gpu.py --n 100 --compare-nonfinite --out "$OUT/capture_gpu_sustained.json" 2>&1 | tail -12 | tee "$OUT/capture_gpu_sustained.txt"
# writer ingest by encode threads on 16 cores, idle / torch-busy / Python-busy process (issue 13 item 1)
timeout -k 5 150 python3 -m benchmarks.bench_writer --threads 1 4 16 --rounds 1 --size-mib 256 --data /tmp/bench_data --out "$OUT/writer_gpu_host.json" 2>&1 | tail -40 | tee "$OUT/writer_gpu_host.txt"
timeout -k 5 60 python3 -m benchmarks.bench_writer --threads 16 --modes idle --rounds 1 --size-mib 256 --direct-io --data /tmp/bench_data --out "$OUT/writer_gpu_host_direct.json" 2>&1 | tail -12 | tee "$OUT/writer_gpu_host_direct.txt"
else
timeout -k 5 300 python3 benchmarks/bench_loader.py --device cuda --data /tmp/bench_data --peer-rounds 1 --out "$OUT/loader_gpu.json" 2>&1 | tee "$OUT/loader_gpu.txt"
# per-core codec speeds on the host's CPU (bytesplit's decode against lz4 depends on the CPU's Huffman decoding)
timeout -k 5 120 python3 -m benchmarks.bench_codec --no-minilm --data-dir /tmp/bench_data --out "$OUT/codec_gpu_host.json" 2>&1 | tail -20 | tee "$OUT/codec_gpu_host.txt"
# the loader's gather (torch.index_select) against np.take split over the decode threads, on 16 cores (same data)
timeout -k 5 120 python3 -m benchmarks.bench_gather --rounds 3 --data /tmp/bench_data --out "$OUT/gather_gpu_host.json" 2>&1 | tail -6 | tee "$OUT/gather_gpu_host.txt"
fi
