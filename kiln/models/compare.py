"""Greedy generation by transformers `generate` on the same weights, to compare Kiln against."""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

from ..errors import KilnError
from .language_model import LanguageModel


def hf_greedy(model: Any, prompt_ids: Sequence[int], max_new_tokens: int, *,
              eos_ids: Optional[Sequence[int]] = None) -> tuple[list[int], float]:
    """Greedy generation by transformers `generate` (with its KV cache): (new ids, seconds).

    ``eos_ids=()`` generates exactly ``max_new_tokens``: EOS is made unreachable (-1) rather
    than forbidden, since min_new_tokens would mask the EOS logit and change which token wins.
    """
    import copy
    import warnings

    import torch
    import transformers
    config = copy.deepcopy(model.generation_config)
    eos = list(eos_ids) if eos_ids is not None else config.eos_token_id
    config.update(eos_token_id=eos if eos != [] else -1, max_new_tokens=max_new_tokens, do_sample=False,
                  pad_token_id=(eos[0] if isinstance(eos, list) and eos else 0), temperature=None, top_k=None,
                  top_p=None)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # -1 is "not a token": that is the point
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            seconds = time.perf_counter() - t0
    finally:
        transformers.logging.set_verbosity(verbosity)
    # generate pads finished sequences to equal length; a single sequence stops at its EOS.
    return out[0, ids.shape[1]:].tolist(), seconds


def torch_greedy(lm: LanguageModel, prompt_ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], float]:
    """The same greedy generation by transformers `generate` on the same weights: (new ids, seconds)."""
    if lm.torch_model is None:
        raise KilnError("load the model with keep_torch=True to compare with transformers")
    return hf_greedy(lm.torch_model, prompt_ids, max_new_tokens, eos_ids=lm.eos_ids)
