"""A tokenizer without transformers: the `tokenizers` library's Tokenizer plus what generation needs.

A model file stores the tokenizer as the `tokenizers` JSON (what ``PreTrainedTokenizerFast.backend_tokenizer
.to_str()`` returns: normalizer, pre-tokenizer, model, post-processor, decoder, added tokens), the special
tokens map and the chat template. `KilnTokenizer` answers the calls `encode_prompt`, `render_chat` and
`StreamDecoder` make on a transformers fast tokenizer, with the same results, so generation from a file
never imports transformers (or torch, which transformers imports).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

from ..errors import FileFormatError, KilnError


class KilnTokenizer:
    """Text ↔ token ids through ``tokenizers.Tokenizer``.

    ``special_tokens_map`` maps roles (bos_token, eos_token, pad_token, ...) to token strings, as
    transformers' ``special_tokens_map``; ``chat_template`` is the Jinja source (or None).
    """

    def __init__(self, backend: Any, *, special_tokens_map: Optional[Mapping[str, Any]] = None,
                 chat_template: Optional[Union[str, dict]] = None):
        self.backend = backend
        self.special_tokens_map = dict(special_tokens_map or {})
        self.chat_template = chat_template

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_transformers(cls, tokenizer: Any) -> "KilnTokenizer":
        """From a transformers fast tokenizer (anything with ``backend_tokenizer``). KilnError otherwise."""
        if isinstance(tokenizer, KilnTokenizer):
            return tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise KilnError(f"the tokenizer {type(tokenizer).__name__} has no `tokenizers` form (not a fast "
                            f"tokenizer), so it cannot travel in a model file")
        from tokenizers import Tokenizer
        specials = {k: [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v)
                    for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items()}
        return cls(Tokenizer.from_str(backend.to_str()), special_tokens_map=specials,
                   chat_template=getattr(tokenizer, "chat_template", None) or None)

    @classmethod
    def from_json(cls, data: Any, where: str = "model file") -> "KilnTokenizer":
        """From ``to_json()``'s dict. A malformed entry is a FileFormatError naming the field."""
        if not isinstance(data, dict) or not isinstance(data.get("tokenizer"), str):
            raise FileFormatError(f"{where}: field tokenizer.tokenizer is missing or not a string")
        specials = data.get("special_tokens", {})
        template = data.get("chat_template")
        if not isinstance(specials, dict) or not (template is None or isinstance(template, (str, dict))):
            raise FileFormatError(f"{where}: field tokenizer.special_tokens or tokenizer.chat_template is malformed")
        from tokenizers import Tokenizer
        try:
            backend = Tokenizer.from_str(data["tokenizer"])
        except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
            raise FileFormatError(f"{where}: field tokenizer.tokenizer is not a `tokenizers` JSON: {e}") from None
        return cls(backend, special_tokens_map=specials, chat_template=template)

    def to_json(self) -> dict:
        return {"tokenizer": self.backend.to_str(), "special_tokens": self.special_tokens_map,
                "chat_template": self.chat_template}

    # -- what generation calls ------------------------------------------------------------
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool = False) -> str:
        if clean_up_tokenization_spaces:
            raise KilnError("KilnTokenizer.decode does not clean up tokenization spaces")
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def token_id(self, role: str) -> Optional[int]:
        """The id of a special token by role ("eos_token", "bos_token", ...), None if the model has none."""
        token = self.special_tokens_map.get(role)
        return self.backend.token_to_id(token) if isinstance(token, str) else None

    @property
    def eos_token_id(self) -> Optional[int]:
        return self.token_id("eos_token")

    @property
    def bos_token_id(self) -> Optional[int]:
        return self.token_id("bos_token")

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return (f"<KilnTokenizer vocab={len(self)} specials={self.special_tokens_map} "
                f"chat_template={'yes' if self.chat_template else 'no'}>")
