"""Render a bundle's chat template with bounded time, memory and output: jinja's sandbox in a worker process.

A chat template is code that arrives inside a bundle. jinja's ``ImmutableSandboxedEnvironment`` stops it reaching
Python's internals, but not from spending the host's memory (``{{ 'a' * 300000000 }}``) or time (nested loops).
So templates render in a small worker process (one per renderer, started on first use, kept for the next
render) that has an address-space limit; the caller waits at most ``timeout_s`` for each answer and kills the
worker when it is late (the next render starts a fresh one). Output beyond ``max_chars`` is refused while it is
being produced, and the sandbox refuses string and list operators whose result would be that large. Every failure
is one ``EdgeshrinkError`` line: syntax errors, undefined names, the sandbox's refusals, the template's own
``raise_exception``, too slow, too large.

    renderer = ChatTemplate(source, {"eos_token": "</s>"}, name="runs/llm/chat_template.jinja")
    renderer.render([{"role": "user", "content": "Hi"}])      # the prompt text
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import weakref

from edgeshrink.errors import EdgeshrinkError

RENDER_TIMEOUT_S = 5.0
MAX_OUTPUT_CHARS = 1 << 20
WORKER_MEMORY_BYTES = 1 << 30

# The worker: reads one JSON request a line on stdin, answers one JSON line on stdout. Run with -I (no
# user site, no PYTHONPATH, no current directory on the path), so only the interpreter's own packages load.
_WORKER = r"""
import json, sys
MEMORY, LIMIT = int(sys.argv[1]), int(sys.argv[2])
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
except (ImportError, ValueError, OSError):
    pass
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

class Refused(Exception):
    pass

def sized(value):
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0

class Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "+", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 256:
            raise SecurityError("exponent too large")
        if operator == "*" and isinstance(right, int) and sized(left) * right > LIMIT \
                or operator == "*" and isinstance(left, int) and sized(right) * left > LIMIT \
                or operator == "+" and sized(left) + sized(right) > LIMIT:
            raise SecurityError(f"a value of more than {LIMIT} characters")
        return super().call_binop(context, operator, left, right)

def raise_exception(message):
    raise Refused(str(message))

def one_line(exc):
    text = str(exc).strip().splitlines()
    where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
    kind = {"TemplateSyntaxError": "syntax error", "UndefinedError": "undefined",
            "SecurityError": "refused by the sandbox"}.get(type(exc).__name__, type(exc).__name__)
    return (f"{kind}{where}: {text[0]}" if text else kind)[:200]

template, specials = None, {}
for line in sys.stdin:
    try:
        request = json.loads(line)
        if "template" in request:
            env = Sandbox(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            template, specials = env.from_string(request["template"]), request["specials"]
            answer = {"ok": True}
        else:
            parts, size = [], 0
            for chunk in template.generate(messages=request["messages"], add_generation_prompt=True, **specials):
                size += len(chunk)
                if size > LIMIT:
                    raise Refused(f"its output is longer than {LIMIT} characters")
                parts.append(chunk)
            answer = {"text": "".join(parts)}
    except Refused as exc:
        answer = {"error": str(exc)[:200]}
    except MemoryError:
        answer = {"error": f"it needs more than {MEMORY >> 20} MiB of memory"}
    except RecursionError:
        answer = {"error": "it recurses too deeply"}
    except (TemplateError, Exception) as exc:
        answer = {"error": one_line(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
"""


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        stream.close()


class ChatTemplate:
    """A chat template with its special tokens, rendered in the bounded worker (see the module docstring)."""

    def __init__(self, source: str, specials: dict, name: str, timeout_s: float = RENDER_TIMEOUT_S,
                 max_chars: int = MAX_OUTPUT_CHARS, memory_bytes: int = WORKER_MEMORY_BYTES):
        self.source, self.specials, self.name = source, dict(specials), name
        self.timeout_s, self.max_chars, self.memory_bytes = timeout_s, max_chars, memory_bytes
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def render(self, messages: list[dict]) -> str:
        """The prompt text of ``messages`` (with the generation prompt), or a one-line EdgeshrinkError."""
        try:
            request = json.dumps({"messages": messages})
        except (TypeError, ValueError):
            raise EdgeshrinkError("chat messages must be JSON-like (lists, dicts, strings, numbers)") from None
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            return self._ask(request)["text"]

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                _kill(self._proc)
                self._proc = None

    def _start(self) -> None:
        try:
            self._proc = subprocess.Popen([sys.executable, "-I", "-c", _WORKER, str(int(self.memory_bytes)),
                                           str(int(self.max_chars))], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                          encoding="utf-8", bufsize=1)
        except OSError as exc:
            raise EdgeshrinkError(f"cannot start the chat-template worker: {exc.strerror}") from None
        weakref.finalize(self, _kill, self._proc)
        self._ask(json.dumps({"template": self.source, "specials": self.specials}), startup=True)

    def _ask(self, request: str, startup: bool = False) -> dict:
        proc = self._proc
        try:
            proc.stdin.write(request + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._stop("the template worker stopped")
        # the first answer also waits for the worker's start (an interpreter and jinja2: ~0.1 s)
        if not select.select([proc.stdout], [], [], self.timeout_s + (10.0 if startup else 0.0))[0]:
            self._stop(f"rendering took longer than {self.timeout_s:g} s (refused; the worker was stopped)")
        line = proc.stdout.readline()
        if not line:  # the worker died: out of memory under its limit, or killed
            self._stop(f"the template worker died while rendering (over {self.memory_bytes >> 20} MiB of memory?)")
        answer = json.loads(line)
        if "error" in answer:  # the template's own failure: the worker lives on
            raise EdgeshrinkError(f"chat template {self.name}: {answer['error']}")
        return answer

    def _stop(self, why: str) -> None:
        """Kill the worker (the next render starts a fresh one) and refuse in one line."""
        _kill(self._proc)
        self._proc = None
        raise EdgeshrinkError(f"chat template {self.name}: {why}") from None
