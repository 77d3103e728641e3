"""Answer agreement and loops of language-model bundles against a reference, under several sampling settings (the
table of BENCHMARKS.md "Right answers from the INT4 language model"): compress/answers.py's compare_answers.

    .venv/bin/python benchmarks/answers.py --reference runs/smollm2-fp32 runs/smollm2-int4 [more bundles] \
        [--prompts 64] [--tokens 48] [--threads 2] [--prompt-window] [--out answers.json]

Settings: greedy; repetition_penalty 1.1, 1.2, 1.3; frequency_penalty 0.5; presence_penalty 0.5 (each over the
answer's tokens, as the runtime counts them). --prompt-window also runs repetition_penalty 1.1 and 1.2 over
prompt + answer (Hugging Face's and vLLM's window) by feeding the prompt's tokens to the penalty.
Prompts: the 8 factual questions, then open-prompts' test part (`edgeshrink data prepare open-prompts` first).
"""
import argparse
import json
import time

import edgeshrink.runtime.generate as generate_module
from edgeshrink.compress.answers import answer_prompts, compare_answers
from edgeshrink.doctor import cpu_info
from edgeshrink.runtime.generate import Generator
from edgeshrink.runtime.sampling import Sampling, penalized

SETTINGS = {"greedy": Sampling(), "rep1.1": Sampling(repetition_penalty=1.1),
            "rep1.2": Sampling(repetition_penalty=1.2), "rep1.3": Sampling(repetition_penalty=1.3),
            "freq0.5": Sampling(frequency_penalty=0.5), "pres0.5": Sampling(presence_penalty=0.5)}


class PromptWindow:
    """A generator whose penalties also count the prompt's tokens (Hugging Face's and vLLM's window)."""

    prompt: list[int] = []

    def __init__(self, generator):
        self.g, self.chat_template = generator, generator.chat_template

    def generate(self, prompt, max_new_tokens, **options):
        PromptWindow.prompt = self.g.encode(prompt)
        return self.g.generate(PromptWindow.prompt, max_new_tokens, **options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", required=True)
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-window", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    prompts = answer_prompts("open-prompts", "test", args.prompts)
    models = {path: Generator(path, threads=args.threads, verify=False) for path in [args.reference, *args.bundles]}
    started = time.time()
    report = {"isa": cpu_info()["isa"], "answer": compare_answers(models, args.reference, prompts, args.tokens, SETTINGS,
                                                                   progress=print)}
    if args.prompt_window:
        answer_only = penalized
        generate_module.penalized = lambda row, s, generated: answer_only(row, s, PromptWindow.prompt + list(generated))
        report["prompt_window"] = compare_answers(
            {k: PromptWindow(g) for k, g in models.items()}, args.reference, prompts, args.tokens,
            {"rep1.1-ctx": SETTINGS["rep1.1"], "rep1.2-ctx": SETTINGS["rep1.2"]}, progress=print)
        generate_module.penalized = answer_only
    report["seconds"] = time.time() - started
    for part in ("answer", "prompt_window"):
        for name, rows in report.get(part, {}).get("models", {}).items():
            for label, row in rows.items():
                i, loop, facts = row["identical"], row["looping"], row["facts"]
                print(f"{name} | {label} | identical {100 * i['share']:.0f} [{100 * i['interval'][0]:.0f}, "
                      f"{100 * i['interval'][1]:.0f}] | agreed {row['agreed_tokens']:.1f} | loops {loop['count']}/"
                      f"{loop['n']} | facts {facts['count']}/{facts['n']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
