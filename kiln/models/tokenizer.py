"""Text ↔ token ids around generation: chat templates, streaming detokenization, a small trainable tokenizer."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ..errors import KilnError

# A small chat template (ChatML, as SmolLM2 and Qwen use) for the test tokenizers built here.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer: Any, text: str, chat: Optional[bool] = None) -> list[int]:
    """Token ids for a user prompt. chat=None applies the chat template when the tokenizer has one.

    The template is rendered to text and then encoded without extra special tokens: the template
    already writes every BOS/role marker it wants, and adding the tokenizer's BOS on top would double it.
    """
    if tokenizer is None:
        raise KilnError("this model has no tokenizer: pass the prompt as a list of token ids")
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    if use_chat:
        if not has_chat_template(tokenizer):
            raise KilnError("--chat was requested but the model's tokenizer has no chat template")
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


class StreamDecoder:
    """Turns a growing list of token ids into text deltas, never emitting half a UTF-8 character.

    Byte-level BPE splits multi-byte characters across tokens; decoding such a prefix ends in U+FFFD,
    so we hold the text back until the character is complete. Decoding re-reads only the last few
    tokens (from ``prefix``), which keeps streaming linear in length.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0     # start of the window re-decoded each time
        self.read = 0       # ids before this index have been emitted as text
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (possibly empty)."""
        self.ids.append(int(token_id))
        if self.tokenizer is None:
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        # The window starts a few tokens back so that tokenizers which look at neighbours (spaces,
        # merged bytes) decode the new token in context; emit once it ends in a complete character.
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end (e.g. a truly invalid byte sequence)."""
        if self.tokenizer is None or self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        delta = after[len(before):] if after.startswith(before) else after
        self.read = len(self.ids)
        self.text += delta
        return delta


def train_bpe_tokenizer(sentences: Sequence[str], vocab_size: int = 300, chat_template: Optional[str] = CHATML_TEMPLATE,
                        specials: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")) -> Any:
    """A small byte-level BPE (PreTrainedTokenizerFast) trained on ``sentences``: for tests and demos where
    no real tokenizer can be downloaded. Special tokens get ids 0.. in the order given; the first is BOS/EOS/PAD
    unless the chat markers exist, in which case <|im_end|> ends a turn like in ChatML models."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(sentences), trainer=trainer)
    eos = "<|im_end|>" if "<|im_end|>" in specials else specials[0]
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=specials[0], eos_token=eos,
                                      pad_token=specials[0], chat_template=chat_template,
                                      clean_up_tokenization_spaces=False)
