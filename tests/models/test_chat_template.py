"""Chat templates render in Kiln's own sandbox with time and size limits (issue 16), and render exactly
what transformers' apply_chat_template renders for real templates."""
import time

import pytest

from kiln.errors import KilnError
from kiln.models.tokenizer import CHATML_TEMPLATE, encode_prompt, render_chat, render_template

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Über café ünïcode? \"q\" {{x}}"}],
]


def _same_as_transformers(tok):
    for msgs in CONVERSATIONS:
        for gen in (True, False):
            assert render_chat(tok, msgs, add_generation_prompt=gen) == \
                tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def test_tiny_tokenizer_template_renders_as_transformers(tiny_tokenizer):
    _same_as_transformers(tiny_tokenizer)
    want = tiny_tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert encode_prompt(tiny_tokenizer, CONVERSATIONS[0][0]["content"]) == list(want)


def test_default_model_template_renders_as_transformers():
    from kiln.models.default import default_model_path
    from kiln.models.gguf import build_tokenizer, read_gguf
    try:
        path = default_model_path()
    except Exception as e:
        pytest.skip(f"default model not installed: {e}")
    _same_as_transformers(build_tokenizer(read_gguf(path)))


@pytest.mark.parametrize("template,match", [
    ("{{ ''.__class__.__mro__ }}", "refused by the sandbox"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused by the sandbox"),
    ("{{ cycler.__init__.__globals__ }}", "refused by the sandbox|undefined|failed"),
    ("{% set ns = namespace(_x=1) %}", "refused by the sandbox"),
    ("{{ 'a' * 10**9 }}", "repeats a sequence"),
    ("{{ ['a'] * 10**9 }}", "repeats a sequence"),
    ("{{ 'a'|center(10**9) }}", "where a width or count goes"),
    ("{{ 'a'.ljust(10**9) }}", "where a width or count goes"),
    ("{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "built a value"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}ab{% endfor %}{% endfor %}", "output exceeds|ran over"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran over"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
    ("{{ raise_exception('no system role') }}", "no system role"),
    ("{% for %}", "does not parse"),
    ("{{ 1 + 'a' }}", "TypeError"),
])
def test_hostile_templates_end_in_a_clean_error_within_the_limit(template, match):
    t0 = time.monotonic()
    with pytest.raises(KilnError, match=match):
        render_template(template, {"messages": []}, seconds=1.0)
    assert time.monotonic() - t0 < 8.0  # 1 s limit plus slack for a loaded machine


def test_limits_do_not_leak_into_later_work():
    with pytest.raises(KilnError):
        render_template("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", {},
                        seconds=0.2)
    time.sleep(0.3)  # a late watchdog must not fire into unrelated code
    assert render_template(CHATML_TEMPLATE, {"messages": [{"role": "user", "content": "x"}],
                                             "add_generation_prompt": False}) == "<|im_start|>user\nx<|im_end|>\n"


def test_tokenizer_without_template_is_a_kiln_error(tiny_tokenizer):
    class NoTemplate:
        chat_template = None
    with pytest.raises(KilnError, match="no chat template"):
        render_chat(NoTemplate(), CONVERSATIONS[0])
