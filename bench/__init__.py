"""Kiln's benchmark harness: Kiln against PyTorch eager, torch.compile and ONNX Runtime.

Run it with ``kiln bench`` (kiln/cli_bench.py) or ``python -m bench.run`` from the repository root.
"""
