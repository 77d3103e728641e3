"""Fine-tune a decoder language model on a prompted classification task: a cloud LLM for the router.

    from edgeshrink.models.finetune import finetune
    from edgeshrink.models.finetune.decoder import LLMFinetuneConfig
    record = finetune("smollm2", "runs/smollm2-sentiment", LLMFinetuneConfig(epochs=1), data="sentiment-movies")

Each train example becomes the prompt of ``route/prompts.py`` (the data's built-in prompt, or the one
given) followed by the label's answer words and end-of-sequence; the loss is next-token cross-entropy
on those answer tokens only, so the model learns to answer the task in the format the router scores.
The prompt is rendered with the same code as the torch-free ``runtime.prompted`` uses, so the
exported bundle answers exactly what was trained. Test accuracy is scored like the router scores it:
the label whose answer tokens are most likely. Training keeps compress/trainer.py's contract (work in
OUT.partial/, a checkpoint per epoch to resume from, a NaN loss stops the run) but keeps the last epoch:
the task has no per-epoch calibration score to choose a best one by.

``quantization_aware``: every weight trains through the INT4 grid ``quantize`` will write (compress/quantize/
aware.py, as ``distill --quantization-aware``); the test accuracy is the INT4 model's, and the saved weights
are their grid values, which quantize reads back instead of re-rounding.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from edgeshrink.compress.quantize.config import BlockSize, without_training_grid
from edgeshrink.data import DataConfig
from edgeshrink.models.finetune import TrainSchedule, hf_writer, model_record, scored, seed_training
from edgeshrink.route.prompts import PromptConfig
from edgeshrink.runtime.prompted import Prompter


class LLMFinetuneConfig(TrainSchedule):
    """Training a decoder to answer a prompted task: the classifier's schedule, a prompt instead of max_length
    (the prompt's ``max_text_tokens`` cuts inputs)."""

    prompt: PromptConfig | None = None  # None: the data's built-in prompt, else the generic one
    few_shot: int | None = Field(None, ge=0, le=16)  # train-split examples shown in the prompt; None: the prompt's
    quantization_aware: bool = False  # train through the INT4 grid quantize writes (see the module doc)
    quantization_block_size: BlockSize = 32  # its block along the inputs: quantize's --block-size must match

    def key_form(self) -> dict:
        return without_training_grid(self.to_dict())


class HFPrompter(Prompter):
    """Token ids of prompts and answers with a Hugging Face tokenizer (the training side of PromptedLLM)."""

    def __init__(self, tokenizer, prompt: dict, context_length: int):
        self.tokenizer = tokenizer
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        chat = (lambda m: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)) \
            if tokenizer.chat_template else None
        super().__init__(prompt, context_length, chat)

    def encode(self, text: str, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def token_ends(self, text: str) -> list[int]:
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return [end for _, end in offsets]


def context_length(config) -> int:
    """The positions a decoder's config allows (what the exported bundle records as its context)."""
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def _pad(rows: list[list[int]], value: int):
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def answer_logliks(net, prompter: HFPrompter, texts: list[str], batch_size: int = 16, device: str = "cpu",
                   progress=None) -> np.ndarray:
    """(n, labels): the summed log-probability of each label's answer tokens after the prompt.

    Single-token answers are all read from one pass over the prompt; longer ones get a pass each.
    Rows are batched by length, so padding stays short."""
    import torch

    single = all(len(a) == 1 for a in prompter.answer_ids)
    prompts = [prompter.prompt_ids(t)[0] for t in texts]
    pairs = [(i, None, p, []) for i, p in enumerate(prompts)] if single else \
        [(i, j, p, a) for i, p in enumerate(prompts) for j, a in enumerate(prompter.answer_ids)]
    pairs.sort(key=lambda pair: len(pair[2]) + len(pair[3]))
    out = np.zeros((len(texts), len(prompter.answer_ids)))
    first = torch.tensor([a[0] for a in prompter.answer_ids])
    pad = prompter.tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            rows = [p + a for _, _, p, a in chunk]
            ids = _pad(rows, pad).to(device)
            mask = _pad([[1] * len(r) for r in rows], 0).to(device)
            logp = torch.log_softmax(net(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1).cpu()
            for k, (i, j, p, a) in enumerate(chunk):
                if j is None:
                    out[i] = logp[k, len(p) - 1, first].numpy()
                else:
                    positions = torch.arange(len(p) - 1, len(p) + len(a) - 1)
                    out[i, j] = float(logp[k, positions, torch.tensor(a)].sum())
            if progress:
                progress(len(chunk) if single else len(chunk) / len(prompter.answer_ids))
    return out


def finetune_llm(model: str | Path, out: str | Path, config: LLMFinetuneConfig, *, data: DataConfig | str,
                 force: bool = False, progress=None) -> dict:
    """Train ``model`` (a decoder) to answer the prompted task of ``data``; see the module doc."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from edgeshrink._files import check_output_dir
    from edgeshrink.compress.trainer import TrainRun, choose_precision, progress_columns, training_bar
    from edgeshrink.data import load_data, split_for_training
    from edgeshrink.models.llm import import_llm, load_causal_lm
    from edgeshrink.models.sources import weights_sha256
    from edgeshrink.route.prompts import prompt_for

    out = check_output_dir(out, force)
    examples = load_data(data)
    split = split_for_training(examples, config.split)
    prompt = prompt_for(examples, shots=split.train, base=config.prompt, few_shot=config.few_shot, seed=config.seed)
    model_dir = import_llm(model, progress=progress)
    seed_training(config)
    net, tokenizer = load_causal_lm(model_dir, config.device)
    if config.quantization_aware:  # refused before OUT.partial is made, and before a checkpoint is resumed
        from edgeshrink.compress.quantize.aware import fake_quantized

        fake_quantized(net, config.quantization_block_size, frozen=False)
    prompter = HFPrompter(tokenizer, prompt.to_dict(), context_length(net.config))
    train = split.train if config.max_train_examples is None else split.train.head(config.max_train_examples)
    label_index = {name: i for i, name in enumerate(prompt.labels)}
    sequences = []
    for text, label in zip(train.texts, train.labels):
        ids, _ = prompter.prompt_ids(text)
        answer = prompter.answer_ids[label_index[label]] + prompter.eos
        sequences.append((ids + answer, len(ids)))
    precision = choose_precision("auto", config.device)
    steps_per_epoch = math.ceil(len(sequences) / config.batch_size)
    total_steps = max(1, int(steps_per_epoch * config.epochs))
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_fraction * total_steps), total_steps)
    run = TrainRun(out, json.dumps({"config": config.to_dict(), "model": str(Path(model_dir).resolve()),
                                    "weights_sha256": weights_sha256(model_dir), "data": split.data_record(),
                                    "prompt": prompt.to_dict(), "precision": precision}, sort_keys=True))
    modules = {"model": net, "optimizer": optimizer, "scheduler": schedule}
    state = run.resume(modules)
    rng = np.random.default_rng(config.seed)
    for _ in range(state["epoch"]):  # the batch orders of the epochs already done, so a resumed run equals one run
        rng.permutation(len(sequences))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    started = time.perf_counter()
    net.train()
    with training_bar("fine-tune", progress, transient=True) as bar:
        task = bar.add_task(f"{len(sequences)} examples", total=total_steps, completed=state["step"], loss=float("nan"))
        while run.go_on(state, config.epochs, math.inf) and state["step"] < total_steps:
            run.seed_epoch(config.seed, state["epoch"])  # torch's generator (dropout), as a resumed run sets it
            order = rng.permutation(len(sequences))
            total, count = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                if state["step"] >= total_steps:
                    break
                batch = [sequences[i] for i in order[start:start + config.batch_size]]
                ids = _pad([s for s, _ in batch], pad).to(config.device)
                mask = _pad([[1] * len(s) for s, _ in batch], 0).to(config.device)
                targets = torch.full_like(ids, -100)
                for k, (s, prompt_len) in enumerate(batch):
                    targets[k, prompt_len:len(s)] = ids[k, prompt_len:len(s)]
                with torch.autocast(config.device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = net(input_ids=ids, attention_mask=mask, use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets[:, 1:])
                run.step(loss, state, params, optimizer, schedule, None)
                total, count = total + loss.item(), count + 1
                bar.update(task, advance=1, loss=total / count)
            run.end_epoch(state, modules, net, None, higher_is_better=False,
                          row={"loss": total / max(count, 1), "steps": state["step"]})
    train_seconds = time.perf_counter() - started
    net.eval()
    with training_bar("test accuracy", progress, progress_columns("test accuracy")[:3], transient=True) as bar:
        task = bar.add_task("", total=len(split.test))
        logliks = answer_logliks(net, prompter, list(split.test.texts), device=config.device,
                                 progress=lambda n: bar.update(task, advance=n))
    correct = int(sum(int(row.argmax()) == label_index[y] for row, y in zip(logliks, split.test.labels)))
    record = model_record("text-generation", split, train, config, state["history"], train_seconds,
                          scored(correct, len(split.test)), source={"model": str(model), "path": str(model_dir)},
                          prompted_task={"prompt": prompt.to_dict(), "scored_by": "label log-likelihood"},
                          precision=precision, train_tokens=int(sum(len(s) for s, _ in sequences) * config.epochs))
    if config.quantization_aware:
        from edgeshrink.compress.quantize.aware import bake

        record["quantization_aware"] = bake(net, config.quantization_block_size)
    run.finish(out, hf_writer(net, tokenizer, record))
    return record
