"""What the hostile-input defences cost and how fast they refuse (issue 25).

1. Chat-template rendering: jinja's sandbox in this process (before issue 25) against the bounded worker
   process (runtime/chat_template.py), interleaved in rounds: the worker's first render (its start) and the
   median render afterwards, over a ChatML template and a 6-turn conversation.
2. Refusals: each hostile input below, the time until its one-line refusal and this process's peak memory
   after all of them (the memory goes to the worker, or is never spent).

    .venv/bin/python benchmarks/hostile_input.py [--renders 500] [--json runs/hostile.json]
"""
import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from edgeshrink.doctor import cpu_info
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.chat_template import ChatTemplate

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT = [{"role": r, "content": f"turn {i}: " + "a few words of text " * 8}
        for i, r in enumerate(["system", "user", "assistant", "user", "assistant", "user"])]
HOSTILE_TEMPLATES = {
    "'a' * 300000000": "{{ 'a' * 300000000 }}",
    "nested loops (10^10 steps)": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string doubling with ~ (2^40 chars)": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
                                           "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "sandbox escape (__subclasses__)": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
}


def in_process(source: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    return lambda messages: template.render(messages=messages, add_generation_prompt=True)


def render_costs(renders: int, rounds: int = 5) -> dict:
    old, new, starts = [], [], []
    for _ in range(rounds):
        render = in_process(CHATML)
        for _ in range(renders // rounds):
            t = time.perf_counter()
            render(CHAT)
            old.append(time.perf_counter() - t)
        worker = ChatTemplate(CHATML, {}, name="chatml")
        t = time.perf_counter()
        first = worker.render(CHAT)
        starts.append(time.perf_counter() - t)
        assert first == render(CHAT)
        for _ in range(renders // rounds):
            t = time.perf_counter()
            worker.render(CHAT)
            new.append(time.perf_counter() - t)
        worker.close()
    return {"renders": len(new), "in_process_median_ms": 1000 * statistics.median(old),
            "worker_median_ms": 1000 * statistics.median(new), "worker_first_render_ms": 1000 * statistics.median(starts),
            "worker_p99_ms": 1000 * sorted(new)[int(0.99 * len(new))]}


def refusals() -> list[dict]:
    rows = []
    for name, source in HOSTILE_TEMPLATES.items():
        worker = ChatTemplate(source, {}, name="t")
        t = time.perf_counter()
        try:
            worker.render(CHAT)
            message = "(rendered)"
        except EdgeshrinkError as exc:
            message = str(exc)
        rows.append({"input": f"chat template: {name}", "seconds": time.perf_counter() - t, "refusal": message})
        worker.close()
    from edgeshrink.recipes.schema import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
        cases = {"recipe: YAML alias bomb (9^9 nodes, %d bytes)" % len(bomb): bomb,
                 "recipe: 20,000-deep flow list": "[" * 20000 + "]" * 20000}
        for name, text in cases.items():
            path = Path(tmp) / "r.yaml"
            path.write_text(text)
            t = time.perf_counter()
            try:
                load_recipe(path)
                message = "(loaded)"
            except EdgeshrinkError as exc:
                message = str(exc)
            rows.append({"input": name, "seconds": time.perf_counter() - t, "refusal": message})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cpu = cpu_info()
    costs = render_costs(args.renders)
    rows = refusals()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {cpu.get('model')} | isa: {' '.join(cpu.get('isa', []))}")
    print(f"chat-template render, {costs['renders']} renders interleaved: in-process sandbox "
          f"{costs['in_process_median_ms']:.3f} ms median; bounded worker {costs['worker_median_ms']:.3f} ms median "
          f"(p99 {costs['worker_p99_ms']:.3f} ms), first render with the worker's start "
          f"{costs['worker_first_render_ms']:.0f} ms")
    print(f"\n| hostile input | refused after | refusal |\n|---|---|---|")
    for row in rows:
        print(f"| {row['input']} | {row['seconds']:.3f} s | {row['refusal'][:110]} |")
    print(f"\npeak memory of this process after all of them: {peak_mib:.0f} MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu, "render": costs, "refusals": rows, "peak_rss_mib": peak_mib},
                                        indent=2))


if __name__ == "__main__":
    main()
