"""Chat templates from a bundle (issue 25, items 5 and 13): bounded in time, memory and output, errors one line."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime import load
from edgeshrink.runtime.chat_template import ChatTemplate
from tests import bundle_edit as be

HI = [{"role": "user", "content": "hi"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_renders_like_the_template_says():
    renderer = ChatTemplate(CHATML + "{{ eos_token }}", {"eos_token": "</s>"}, name="t")
    assert renderer.render(HI) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n</s>"
    assert renderer.render(HI) == renderer.render(HI)  # the worker stays and answers again
    renderer.close()


@pytest.mark.parametrize("source,match", [
    ("{{ 'a' * 300000000 }}", "refused by the sandbox: a value of more than"),
    ("{% set s = 'a' * 1000 %}{{ s + s * 1000000 }}", "refused by the sandbox"),
    ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "output is longer than"),
    ("{% for m in messages %}", "syntax error"),
    ("{{ nothing.here }}", "undefined"),
    ("{{ ''.__class__.__mro__ }}", "refused by the sandbox"),
    ("{{ raise_exception('only user and assistant turns') }}", "only user and assistant turns"),
    ("{{ 2 ** 100000 }}", "exponent too large"),
])
def test_hostile_and_broken_templates_are_one_line(source, match):
    renderer = ChatTemplate(source, {}, name="t")
    started = time.monotonic()
    with pytest.raises(EdgeshrinkError, match=match) as caught:
        renderer.render(HI)
    assert "\n" not in str(caught.value) and time.monotonic() - started < 5
    renderer.close()


def test_a_slow_template_is_stopped_at_its_time_limit():
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    renderer = ChatTemplate(slow, {}, name="t", timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(EdgeshrinkError, match="rendering took longer than 1 s"):
        renderer.render(HI)
    assert time.monotonic() - started < 1.0 + 11  # the 1 s limit plus the worker's start-up allowance
    # the stopped worker is replaced: a good template in the same renderer answers again
    renderer.source = CHATML
    assert renderer.render(HI).startswith("<|im_start|>user")


def test_memory_is_bounded_in_the_worker_not_the_caller():
    # `~` (concatenation) is not an operator the sandbox can intercept: the string doubles until the worker's
    # address-space limit stops it, while this process stays small.
    doubling = "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    renderer = ChatTemplate(doubling, {}, name="t", memory_bytes=256 << 20, timeout_s=20)
    with pytest.raises(EdgeshrinkError, match="MiB of memory"):
        renderer.render(HI)


def test_messages_that_are_not_json_are_one_line():
    with pytest.raises(EdgeshrinkError, match="JSON-like"):
        ChatTemplate(CHATML, {}, name="t").render([{"role": "user", "content": object()}])


@pytest.fixture
def llm_bundle(tiny_llm_bundle):
    return tiny_llm_bundle


@pytest.mark.parametrize("source,match", [
    ("{{ 'a' * 300000000 }}", "refused by the sandbox"),
    ("{% if %}", "syntax error"),
    ("{{ x.y }}", "undefined"),
    ("{{ ''.__class__ }}{{ ''.__class__.__subclasses__() }}", "refused by the sandbox"),
])
def test_generate_chat_with_a_bad_template_is_one_line(llm_bundle, tmp_path, source, match):
    b = be.copy_bundle(llm_bundle, tmp_path / "b")
    be.put_file(b, "chat_template.jinja", source)
    with pytest.raises(EdgeshrinkError, match=match):
        load(b).generate(HI, max_new_tokens=2)
    result = CliRunner().invoke(app, ["generate", str(b), "--chat", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert match.split()[0] in result.stderr and "Traceback" not in result.output
