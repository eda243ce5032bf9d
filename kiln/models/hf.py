"""Hugging Face model folders (config.json + safetensors + tokenizer files) → fp32 transformers model → Kiln.

Also home of the pieces every causal LM shares once it is a transformers module, whatever file it came
from: the logits-only wrapper and the one-time export with a dynamic sequence dimension.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import KilnError

# The sequence length used for the example input of torch.export; any value inside the dynamic
# range works, it only has to avoid 0/1 which torch.export would specialize on.
_EXAMPLE_LEN = 8
DEFAULT_MAX_LEN = 2048


@dataclass
class HFParts:
    """What a loader hands to generation: the eval-mode fp32 model and what travels with it."""

    model: Any                    # transformers PreTrainedModel, eval, fp32
    tokenizer: Any                # PreTrainedTokenizerFast or None (folder without tokenizer files)
    generation_config: Any        # transformers GenerationConfig or None
    source: str                   # where it came from, for messages


def _torch_nn():
    import torch  # noqa: F401  (kept local: importing kiln.models must not import torch)
    from torch import nn
    return nn


def is_hf_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def load_hf_folder(path: str | os.PathLike) -> HFParts:
    """Load a folder written by ``save_pretrained``: never touches the network (local_files_only)."""
    folder = Path(path)
    if not folder.exists():
        raise KilnError(f"model folder {str(folder)!r} does not exist")
    if not is_hf_folder(folder):
        raise KilnError(f"{str(folder)!r} is not a Hugging Face model folder (no config.json in it)")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise KilnError(f"{str(folder)!r} has a config.json but no *.safetensors weights")
    import torch
    import transformers as tf
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise KilnError(f"transformers could not load the model in {str(folder)!r}: {e}") from e
    model = model.float().eval()
    return HFParts(model=model, tokenizer=load_hf_tokenizer(folder), generation_config=_generation_config(folder),
                   source=str(folder))


def load_hf_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer, or None if it ships no tokenizer files (then only token ids can be fed)."""
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    import transformers as tf
    try:
        return tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise KilnError(f"transformers could not load the tokenizer in {str(folder)!r}: {e}") from e


def _generation_config(folder: Path) -> Any:
    if not (folder / "generation_config.json").is_file():
        return None
    import transformers as tf
    return tf.GenerationConfig.from_pretrained(folder, local_files_only=True)


def context_length(config: Any) -> int:
    """The longest sequence the model's position embeddings allow."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LEN


def eos_token_ids(model: Any, tokenizer: Any = None, generation_config: Any = None) -> tuple[int, ...]:
    """Every id that ends a generation: generation_config's, then config's, then the tokenizer's."""
    ids: list[int] = []
    for source in (generation_config, getattr(model, "generation_config", None), getattr(model, "config", None),
                   tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        for v in ([value] if isinstance(value, int) else list(value or [])):
            if v not in ids:
                ids.append(int(v))
    return tuple(ids)


def logits_module(model: Any, last_only: bool = False):
    """input_ids -> logits, without the HF cache machinery. ``last_only`` keeps only the last position
    (``logits_to_keep=1``): generation needs nothing else, and it skips the vocab projection for the
    rest of the sequence (about a fifth of SmolLM2's work per token)."""
    nn = _torch_nn()

    class CausalLMLogits(nn.Module):
        def __init__(self, inner: Any, keep_last: bool):
            super().__init__()
            self.model, self.keep_last = inner, keep_last

        def forward(self, input_ids):
            if self.keep_last:
                return self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits
            return self.model(input_ids=input_ids, use_cache=False).logits

    return CausalLMLogits(model, last_only).eval()


@dataclass
class CompiledLM:
    """A Kiln session over input_ids with a dynamic sequence length in [min_len, max_len]."""

    session: Any          # kiln.Session
    min_len: int
    max_len: int
    last_only: bool       # output is (1, 1, vocab) instead of (1, seq, vocab)


def compile_causal_lm(model: Any, *, max_len: int, executor: str = "compiled", last_only: bool = True,
                      optimize: bool = True, **quant: Any) -> CompiledLM:
    """Export once with a dynamic sequence dim, so decoding never re-exports per token.

    min=1 lets a one-token prompt run as it is. If torch.export refuses min=1 for some model, we fall back
    to min=2 with full logits: a short input is then right-padded, and thanks to the causal mask the
    logits at the real positions do not see the padding.
    """
    import torch
    from torch.export import Dim

    import kiln
    max_len = int(max_len)
    if max_len < 2:
        raise KilnError(f"max_len must be at least 2, got {max_len}")
    example = torch.zeros((1, min(_EXAMPLE_LEN, max_len)), dtype=torch.long)
    first_error: Optional[BaseException] = None
    for min_len, keep_last in ((1, last_only), (2, False)):
        wrapped = logits_module(model, keep_last)
        try:
            session = kiln.compile(wrapped, (example,), executor=executor, optimize=optimize, **quant,
                                   dynamic_shapes={"input_ids": {1: Dim("seq", min=min_len, max=max_len)}})
        except KilnError:
            raise  # Kiln's own complaints (an unsupported op, ...) would repeat with min=2
        except Exception as e:  # torch.export's constraint violations have no common base class
            first_error = first_error or e
            continue
        return CompiledLM(session=session, min_len=min_len, max_len=max_len, last_only=keep_last)
    raise KilnError(f"torch.export could not capture the model with a dynamic sequence length: {first_error}")
