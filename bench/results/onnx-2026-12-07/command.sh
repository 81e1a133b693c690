# The runs behind docs/benchmarks/onnx.md (2 shared CPU cores; load average before and after each
# run in load.txt). The offline backbone here is its architecture built with the test suite's
# tiny alignment (tests/models/test_offline.py TINY: the same EfficientNet-Lite0 + MiniLM towers
# at 64 px, only 3 alignment steps): throughput does not depend on how well it is aligned, and
# the full build (python -m models build-offline-backbone) was still running on this machine.
.venv/bin/python -c "from pathlib import Path; from robust_clip_offline.build import build_offline_backbone; from tests.models.test_offline import TINY, fake_sets; build_offline_backbone(Path('/tmp/r3onnx/bb/offline-lite0-minilm'), TINY, sets=fake_sets(), progress=False)"
.venv/bin/python bench/serve.py --models /tmp/r3onnx/bb/offline-lite0-minilm \
    --engines torch,onnxruntime --protocols predict,v2 --modes batched --clients 32,64 \
    --requests 256 --limit-seconds 5 --json bench/results/onnx-2026-12-07/offline.json
.venv/bin/python bench/serve.py --models ViT-B-32 --engines torch,onnxruntime \
    --protocols predict --modes batched --clients 32 --requests 96 --limit-seconds 10 \
    --json bench/results/onnx-2026-12-07/vit-b-32.json
