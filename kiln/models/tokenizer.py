"""Text ↔ token ids around generation: chat templates, streaming detokenization, a small trainable tokenizer.

Chat templates are code from the model file (a GGUF's tokenizer.chat_template, a Hub tokenizer_config):
Kiln renders them itself, in jinja2's ImmutableSandboxedEnvironment with the globals and filters
transformers gives templates (so the result is the same text), plus two limits transformers does not
set: TEMPLATE_SECONDS of wall time and TEMPLATE_MAX_CHARS for the output and for any value the
template builds. A template that escapes the sandbox, loops for too long or builds a huge string
ends in a KilnError, not in a jinja2.SecurityError, a hang or an out-of-memory kill.
"""
from __future__ import annotations

import ctypes
import json
import threading
from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

from ..errors import KilnError

TEMPLATE_SECONDS = 5.0
TEMPLATE_MAX_CHARS = 1 << 22

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
        rendered = render_chat(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


class _TemplateLimit(Exception):
    """Raised inside a render (also asynchronously, by the watchdog) when a limit is hit."""


def _sized(value: Any, limit: int) -> Any:
    if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > limit:
        raise _TemplateLimit(f"built a value of {len(value)} items (limit {limit})")
    return value


def _small_ints(args: Sequence[Any], kwargs: Mapping[str, Any], limit: int) -> None:
    """Widths and counts (center(10**9), ljust, zfill, indent, ...) are checked before the call runs."""
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > limit:
            raise _TemplateLimit(f"passes {v} where a width or count goes (limit {limit})")


def _environment(max_chars: int):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Env(ImmutableSandboxedEnvironment):
        # The sandbox already refuses unsafe attributes and caps range() at 100000 items; these hooks
        # bound the size of everything the template computes.
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > max_chars:
                        raise _TemplateLimit(f"repeats a sequence {n} times (limit {max_chars} items)")
            if operator == "**" and isinstance(right, int) and isinstance(left, int) and abs(right) > 4096:
                raise _TemplateLimit(f"raises to the power {right}")
            return _sized(super().call_binop(context, operator, left, right), max_chars)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            if isinstance(getattr(__obj, "__self__", None), (str, list, tuple, bytes)):
                _small_ints(args, kwargs, max_chars)
            return _sized(super().call(__context, __obj, *args, **kwargs), max_chars)

        def getattr(self, obj, attribute):
            return _sized(super().getattr(obj, attribute), max_chars)

        def getitem(self, obj, argument):
            return _sized(super().getitem(obj, argument), max_chars)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def namespace(*args, **kwargs):
        attrs = dict(*args, **kwargs)
        if any(isinstance(k, str) and k.startswith("_") for k in attrs):
            raise jinja2.exceptions.SecurityError("chat templates cannot store underscore-prefixed attributes")
        return jinja2.utils.Namespace(attrs)

    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    for name, f in list(env.filters.items()):  # filters run plain Python: bound what they return
        env.filters[name] = _bounded_filter(f, max_chars)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=_TemplateDict(), namespace=namespace)
    return env


def _bounded_filter(f, max_chars: int):
    import functools

    skip = 2 if hasattr(f, "jinja_pass_arg") else 1  # (context,) value: the filtered value may be anything

    @functools.wraps(f)  # also copies jinja's pass_context / pass_environment marker
    def bounded(*args, **kwargs):
        _small_ints(args[skip:], kwargs, max_chars)
        return _sized(f(*args, **kwargs), max_chars)
    return bounded


class _TemplateDict:
    """`dict` as templates see it (as transformers gives it): construction and fromkeys, no type object."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def render_template(template: str, context: Mapping[str, Any], *, seconds: float = TEMPLATE_SECONDS,
                    max_chars: int = TEMPLATE_MAX_CHARS) -> str:
    """Render an untrusted jinja2 chat template in the sandbox, within `seconds` and `max_chars`.

    Raises KilnError for a syntax error, a sandbox violation, the template's own raise_exception,
    any error inside the template, or a limit hit."""
    import jinja2
    try:
        compiled = _environment(max_chars).from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise KilnError(f"chat template does not parse (line {e.lineno}): {e.message}") from None
    done, lock, tid = [False], threading.Lock(), threading.get_ident()

    def expire():  # the only way to stop a pure-Python loop the template runs: raise in its thread
        with lock:
            if not done[0]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(_TemplateLimit))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    try:
        try:
            timer.start()
            parts, n = [], 0
            for chunk in compiled.generate(**context):
                n += len(chunk)
                if n > max_chars:
                    raise _TemplateLimit(f"output exceeds {max_chars} characters")
                parts.append(chunk)
        finally:
            with lock:
                done[0] = True
            timer.cancel()
    except _TemplateLimit as e:
        raise KilnError(f"chat template stopped: {e.args[0] if e.args else f'ran over {seconds} s'}") from None
    except jinja2.exceptions.SecurityError as e:
        raise KilnError(f"chat template refused by the sandbox: {e}") from None
    except jinja2.TemplateError as e:
        raise KilnError(f"chat template error: {e}") from None
    except (RecursionError, MemoryError) as e:
        raise KilnError(f"chat template stopped: {type(e).__name__}") from None
    except Exception as e:  # anything the template's own expressions raise (TypeError, ZeroDivision, ...)
        raise KilnError(f"chat template failed: {type(e).__name__}: {e}") from None
    return "".join(parts)


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                **kwargs: Any) -> str:
    """The tokenizer's chat template applied to `messages` (what transformers' apply_chat_template(...,
    tokenize=False) returns for plain-text messages), rendered by render_template's sandbox and limits."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: transformers picks "default"
        template = template.get("default")
    if not isinstance(template, str) or not template:
        raise KilnError("the tokenizer has no chat template")
    specials = {k: [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v)  # as transformers passes them
                for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items()}
    context = {**specials, **kwargs, "messages": [dict(m) for m in messages], "tools": None, "documents": None,
               "add_generation_prompt": add_generation_prompt}
    return render_template(template, context)


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
