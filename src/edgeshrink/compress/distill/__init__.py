"""Knowledge distillation of a (pruned) student from its teacher: one verb and one training loop for every
kind of model that takes it.

    from edgeshrink.compress.distill import distill
    from edgeshrink.compress.distill.encoder import DistillConfig
    from edgeshrink.compress.distill.decoder import LLMDistillConfig
    record = distill("runs/cloud", "runs/student", "runs/device", DistillConfig(epochs=5), data="sentiment-movies")
    record = distill("smollm2", "runs/smollm2-drop8", "runs/healed", LLMDistillConfig(), data="bbc-news")

The skeleton is shared: the teacher's task (edgeshrink/tasks.py) picks the implementation and its config
class; the output and device are checked; the run follows compress/trainer.py's contract (work in
``OUT.partial/``, teacher outputs cached once, a checkpoint per epoch so a resumed run equals an
uninterrupted one, NaN stop, early stop, the best epoch kept, one rename at the end) with AdamW and a linear
schedule with warm-up. What differs per task lives beside it, as a ``Distillation`` built from (teacher,
student, config, data): ``encoder.py`` (a text classifier: labels, logits, [CLS] states and attention maps)
and ``decoder.py`` (a causal LM: label-free, on packed plain text, top-k next-token distributions). It loads
and checks the pair, prepares the data and the teacher's cache, and gives the loss of a batch, the epoch's
calibration score and the record.
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
    from rich.progress import Progress
    from transformers import get_linear_schedule_with_warmup

    from edgeshrink._files import check_output_dir
    from edgeshrink.compress.trainer import TrainRun, progress_columns
    from edgeshrink.models.sources import RECORD_NAME

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
    with Progress(*progress_columns("distill")) as bar:
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
    record = part.record(state, round(time.perf_counter() - started, 1))

    def write(final: Path) -> None:
        part.student.save_pretrained(final)
        part.tokenizer.save_pretrained(final)
        (final / RECORD_NAME).write_text(json.dumps(record, indent=2))

    run.finish(out, write)
    return record
