"""Command-line options that several `kiln` commands share, declared once."""
from __future__ import annotations

import argparse

QUANT_FORMATS = ("int8", "q8_0", "q4_0", "q4_k")


def add_weight_options(p: argparse.ArgumentParser, *, act: bool = True) -> None:
    """--dtype / --quantize [/ --act]: how a model's weights are stored and multiplied."""
    p.add_argument("--dtype", choices=("native", "f32"), default="native",
                   help="native (default): a GGUF's quantized weights run in their own blocks; f32: dequantize at load")
    p.add_argument("--quantize", choices=QUANT_FORMATS, default=None,
                   help="quantize an fp32 model's matmul weights at compile time")
    if act:
        p.add_argument("--act", choices=("exact", "int8"), default="exact",
                       help="quantized matmul activations: exact (fp32, default) or int8 (VNNI dot products)")
