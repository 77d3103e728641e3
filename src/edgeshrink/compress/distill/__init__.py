"""Knowledge distillation of a (pruned) student from its teacher: one verb and one training loop for every
kind of model that takes it.

    from edgeshrink.compress.distill import distill
    from edgeshrink.compress.distill.encoder import DistillConfig
    from edgeshrink.compress.distill.decoder import LLMDistillConfig
    record = distill("runs/cloud", "runs/student", "runs/device", DistillConfig(epochs=5), data="sentiment-movies")
    record = distill("smollm2", "runs/smollm2-drop8", "runs/healed", LLMDistillConfig(), data="bbc-news")

The teacher's task (edgeshrink/tasks.py) picks what differs, a ``Distillation`` built from (teacher, student,
config, data): ``encoder.py`` (a text classifier: labels, logits, [CLS] states, attention maps) or ``decoder.py``
(a causal LM: label-free, packed plain text, top-k next-token distributions). It checks the pair, prepares the
teacher's cache, and gives a batch's loss, the epoch's calibration score and the record. The loop here keeps
compress/trainer.py's contract (resumable, NaN and early stop, best epoch kept), with AdamW and a linear
schedule with warm-up.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from edgeshrink import tasks
from edgeshrink.errors import EdgeshrinkError


def distill(teacher: str | Path, student: str | Path, out: str | Path, config=None, *, data, force: bool = False,
            progress=None) -> dict:
    """Train ``student`` to imitate ``teacher`` on ``data``; keep the best epoch on calibration; return the
    record (also saved in ``out``). ``config`` is the teacher's task's config (None: its defaults); ``data`` is
    a classifier's labelled data set, or a language model's text (or several: the first also calibrates)."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from edgeshrink._files import check_output_dir
    from edgeshrink.compress.trainer import TrainRun, training_bar
    from edgeshrink.models.finetune import hf_writer

    task = tasks.of_model(teacher)
    impl = task.implementation("distill")
    config = impl.check_config(config)
    if tasks.of_model(student) is not task:
        raise EdgeshrinkError(f"distill: the student {student} is not a {task.name} model like its teacher (it reads "
                              f"as {tasks.of_model(student).name})")
    out = Path(out)
    check_output_dir(out, force)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise EdgeshrinkError("device 'cuda' asked for, but torch sees no CUDA GPU")
    part = impl.function()(teacher, student, config, data)
    part.progress = progress  # its own passes over the data (a language model's teacher pass) report here too
    started = time.perf_counter()
    run = TrainRun(out, json.dumps(part.fingerprint, sort_keys=True))
    part.prepare(run)
    params = part.parameters()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = math.ceil(part.examples / config.batch_size) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_fraction * total_steps), total_steps)
    modules = {"student": part.student, "optimizer": optimizer, "scheduler": scheduler, **part.modules}
    state = run.resume(modules)
    part.start(state)
    with training_bar("distill", progress) as bar:
        task = bar.add_task("train", total=total_steps, completed=state["step"], loss=float("nan"))
        while run.go_on(state, config.epochs, config.patience):
            epoch = state["epoch"]
            rng = run.seed_epoch(config.seed, epoch)
            part.student.train()
            running = None
            for rows in part.batches(rng):
                running = run.step(part.loss(rows), state, params, optimizer, scheduler, running)
                bar.update(task, advance=1, loss=running, description=f"epoch {epoch + 1}")
            part.student.eval()
            score, row, said = part.evaluate(started)
            improved = run.end_epoch(state, modules, part.student, score, part.higher_is_better,
                                     {"train_loss": running, **row})
            bar.console.print(f"epoch {epoch + 1}: loss {running:.4f}, {said}" + (" (best)" if improved else ""))

    part.teacher.to("cpu")
    run.load_best(part.student)
    part.student.to("cpu").eval()
    part.finish()
    record = part.record(state, round(time.perf_counter() - started, 1))
    run.finish(out, hf_writer(part.student, part.tokenizer, record))
    return record


def check_smaller(student, teacher, make_one: str) -> None:
    """Refuse a student with as many parameters as its teacher; ``make_one``: the command that makes a smaller one."""
    sizes = [sum(p.numel() for p in net.parameters()) for net in (student, teacher)]
    if sizes[0] >= sizes[1]:
        raise EdgeshrinkError(f"the student ({sizes[0]:,} parameters) is not smaller than its teacher ({sizes[1]:,}); "
                              f"make one with `{make_one}`")
