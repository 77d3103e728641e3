"""Knowledge distillation of a (pruned) student from its teacher.

    from edgeshrink.compress.distill import distill, DistillConfig
    record = distill("runs/cloud", "runs/student", "sentiment-movies", "runs/device", DistillConfig(epochs=5))

loss = α·CE(student, labels) + β·T²·KL(teacher/T ‖ student/T) + γ·MSE(proj(student [CLS] states), teacher [CLS] states)
       + δ·MSE(student attention maps, teacher attention maps)

Hidden states are matched at the [CLS] position only (student layer i ↔ the teacher layer it was cut
from), so the loss stays valid when the student's vocabulary was pruned and a word tokenizes
differently. Teacher logits and states are computed once and cached. The optional attention-map loss
(TinyBERT's) compares every kept head with the teacher head it was cut from, so it runs the teacher on
each batch (about twice the time) and needs the student to tokenize the train texts exactly like the
teacher (true for a vocabulary pruned on the same train split). Work happens in ``OUT.partial/``: a
checkpoint after every epoch, so an interrupted run resumes where it stopped (each epoch's batch order
and dropout are seeded by epoch, so a resumed run equals an uninterrupted one); the finished model
replaces ``OUT`` in one rename.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeshrink.compress.augment import AugmentConfig, augment_texts
from edgeshrink.compress.trainer import TrainRun, progress_columns
from edgeshrink.config import Config
from edgeshrink.data import DataConfig, SplitConfig, load_data, split_examples
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.sources import RECORD_NAME, check_labels, read_record, resolve_model, weights_sha256
from edgeshrink.models.torch_text import shuffled_length_batches
from edgeshrink.stats import accuracy_interval


class DistillConfig(Config):
    version: int = 1
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.06, ge=0, lt=1)
    alpha_ce: float = Field(0.5, ge=0)  # weight of cross-entropy with the labels
    beta_kd: float = Field(0.5, ge=0)  # weight of the temperature-scaled KL to the teacher
    temperature: float = Field(2.0, gt=0)
    gamma_hidden: float = Field(0.0, ge=0)  # weight of [CLS] hidden-state MSE
    delta_attention: float = Field(0.0, ge=0)  # weight of attention-map MSE (runs the teacher every step)
    label_free: bool = False  # train on the teacher's predictions instead of the labels
    patience: int = Field(2, ge=1)  # epochs without a better calibration accuracy before stopping
    max_length: int | None = Field(None, ge=8)
    max_train_examples: int | None = Field(None, ge=1)
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    augment: AugmentConfig = AugmentConfig()  # extra texts labelled by the teacher only
    split: SplitConfig = SplitConfig()

    def model_post_init(self, _context) -> None:
        if self.alpha_ce + self.beta_kd + self.gamma_hidden + self.delta_attention == 0:
            raise ValueError("at least one of alpha_ce, beta_kd, gamma_hidden, delta_attention must be positive")


def _check_tokenizers(teacher_tok, student_tok) -> None:
    teacher_vocab, student_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    extra = set(student_vocab) - set(teacher_vocab)
    if extra:
        raise EdgeshrinkError(f"the student's tokenizer does not match the teacher's: {len(extra)} tokens the teacher "
                              f"does not have (e.g. {sorted(extra)[:3]})")


def _param_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _encode(tokenizer, texts, max_length):
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return enc, [len(ids) for ids in enc["input_ids"]]


_batches = shuffled_length_batches  # a module name of its own, so a test can interrupt an epoch


def _head_map(student_record: dict, teacher_heads: int, student_net) -> list[list[int]]:
    """For each student layer (depth), the teacher head each of its heads was cut from."""
    from edgeshrink.models import arch

    family = arch.family_of(student_net.config)
    family.check("distill_attention")
    blocks = family.block_list(student_net)
    pruned = (student_record.get("prune") or {}).get("pruned_heads") or {}
    out = []
    for i in range(student_net.config.num_hidden_layers):
        block = 0 if family.shared_blocks else i
        kept = [h for h in range(teacher_heads) if h not in set(pruned.get(str(block), []))]
        if len(kept) != family.attention_of(blocks[block]).heads:
            raise EdgeshrinkError(f"cannot tell which teacher heads student layer {i} kept: its prune record is missing")
        out.append(kept)
    return out


def _heads(model) -> int:
    from edgeshrink.models import arch

    family = arch.family_of(model.config)
    return family.attention_of(family.block_list(model)[0]).heads


def _attention_loss(student_attn, teacher_attn, teacher_layers, head_map, mask):
    """MSE between the attention probabilities of every kept head and its teacher head, over real tokens."""
    import torch

    valid = (mask[:, None, :, None] * mask[:, None, None, :]).float()  # query and key both real tokens
    total = torch.zeros((), device=mask.device)
    for i, (attn, layer) in enumerate(zip(student_attn, teacher_layers)):
        target = teacher_attn[layer][:, head_map[i]]
        total = total + (((attn - target) ** 2) * valid).sum() / (valid.sum() * attn.shape[1])
    return total / len(student_attn)


def _teacher_outputs(teacher, tokenizer, texts, max_length, batch_size, layers, device):
    """Logits and [CLS] hidden states of the given teacher layers for every text (computed once)."""
    import torch

    enc, lengths = _encode(tokenizer, texts, max_length)
    logits = torch.zeros(len(texts), teacher.config.num_labels)
    hidden = torch.zeros(len(texts), len(layers), teacher.config.hidden_size)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()}, return_tensors="pt").to(device)
            out = teacher(**batch, output_hidden_states=True)
            logits[rows] = out.logits.float().cpu()
            hidden[rows] = torch.stack([out.hidden_states[layer + 1][:, 0] for layer in layers], dim=1).float().cpu()
    return logits, hidden


def distill(teacher: str | Path, student: str | Path, data: DataConfig | str, out: str | Path,
            config: DistillConfig | None = None, force: bool = False) -> dict:
    """Train ``student`` to imitate ``teacher`` on the train split; keep the best epoch on calibration."""
    import torch
    from rich.progress import Progress
    from transformers import get_linear_schedule_with_warmup

    from edgeshrink._files import check_output_dir
    from edgeshrink.models.torch_text import load_classifier, predict_proba

    from edgeshrink.models.cnn import refuse_cnn

    refuse_cnn("distill", teacher, student)
    config = config or DistillConfig()
    out = Path(out)
    check_output_dir(out, force)
    teacher_dir, student_dir = resolve_model(teacher), resolve_model(student)
    attn = "eager" if config.delta_attention else None  # only eager attention returns its maps
    teacher_net, teacher_tok = load_classifier(teacher_dir, attn_implementation=attn)
    student_net, student_tok = load_classifier(student_dir, attn_implementation=attn)
    if config.gamma_hidden:
        from edgeshrink.models import arch

        arch.family_of(student_net.config).check("distill_hidden")
    _check_tokenizers(teacher_tok, student_tok)
    if _param_count(student_net) >= _param_count(teacher_net):
        raise EdgeshrinkError(f"the student ({_param_count(student_net):,} parameters) is not smaller than its teacher "
                              f"({_param_count(teacher_net):,}); make one with `edgeshrink prune`")
    labels = list(teacher_net.config.id2label.values())
    if list(student_net.config.id2label.values()) != labels:
        raise EdgeshrinkError("the student's labels differ from the teacher's")
    max_length = config.max_length or read_record(teacher_dir).get("max_length", 128)
    split = split_examples(load_data(data), config.split)
    train = split.train if config.max_train_examples is None else split.train.head(config.max_train_examples)
    check_labels(train.labels, labels, "the teacher")
    student_record = read_record(student_dir)
    cut_from = (student_record.get("prune") or {}).get("teacher_weights_sha256")
    if cut_from and cut_from != weights_sha256(teacher_dir):
        raise EdgeshrinkError(f"the student {student_dir} was cut from another model than {teacher_dir} (weights sha256 "
                              f"{cut_from[:12]}): distill it from that teacher, whose layers and heads it maps to")
    kept = (student_record.get("prune") or {}).get("kept_layers") or list(range(student_net.config.num_hidden_layers))
    teacher_layers = [*kept]  # student layer i was teacher layer kept[i]

    device = config.device
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgeshrinkError("device 'cuda' asked for, but torch sees no CUDA GPU")
    teacher_net.to(device)
    student_net.to(device)
    started = time.perf_counter()
    fingerprint = json.dumps({"config": config.to_dict(), "teacher": str(teacher_dir.resolve()),
                              "student": str(student_dir.resolve()), "split": split.sha256}, sort_keys=True)
    run = TrainRun(out, fingerprint)
    mask_token = student_tok.mask_token or student_tok.unk_token
    texts = list(train.texts) + augment_texts(list(train.texts), config.augment, mask_token)
    labelled = torch.zeros(len(texts), dtype=torch.bool)
    labelled[:len(train)] = True
    cache = run.cached("teacher_outputs.pt", lambda: dict(zip(("logits", "hidden"), _teacher_outputs(
        teacher_net, teacher_tok, texts, max_length, 64, teacher_layers, device))))
    head_map = _head_map(student_record, _heads(teacher_net), student_net) \
        if config.delta_attention else None
    if not config.delta_attention:
        teacher_net.to("cpu")
    label_index = {name: i for i, name in enumerate(labels)}
    if config.label_free:
        targets, labelled[:] = cache["logits"].argmax(1), True
    else:
        targets = torch.tensor([label_index[y] for y in train.labels] + [0] * (len(texts) - len(train)))

    enc, lengths = _encode(student_tok, texts, max_length)
    if config.delta_attention:
        teacher_enc, teacher_lengths = _encode(teacher_tok, texts, max_length)
        differ = sum(a != b for a, b in zip(lengths, teacher_lengths))
        if differ:
            raise EdgeshrinkError(f"the attention-map loss needs the student to tokenize like the teacher, but "
                                  f"{differ} train texts tokenize to a different length; prune the vocabulary on "
                                  f"this train split, or set delta_attention to 0")
        teacher_net.eval()
    projection = torch.nn.Linear(student_net.config.hidden_size, teacher_net.config.hidden_size).to(device) \
        if config.gamma_hidden > 0 and student_net.config.hidden_size != teacher_net.config.hidden_size else None
    params = list(student_net.parameters()) + (list(projection.parameters()) if projection else [])
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_fraction * total_steps), total_steps)
    modules = {"student": student_net, "optimizer": optimizer, "scheduler": scheduler, "projection": projection}
    state = run.resume(modules)

    T = config.temperature
    with Progress(*progress_columns("distill")) as progress:
        task = progress.add_task("train", total=total_steps, completed=state["step"], loss=float("nan"))
        while run.go_on(state, config.epochs, config.patience):
            epoch = state["epoch"]
            rng = run.seed_epoch(config.seed, epoch)
            student_net.train()
            running = None
            for rows in _batches(lengths, config.batch_size, rng):
                batch = student_tok.pad({k: [enc[k][i] for i in rows] for k in enc.keys()}, return_tensors="pt").to(device)
                out_s = student_net(**batch, output_hidden_states=config.gamma_hidden > 0,
                                    output_attentions=config.delta_attention > 0)
                loss = torch.zeros((), device=device)
                has_label = labelled[rows].to(device)
                if config.alpha_ce and bool(has_label.any()):
                    ce = torch.nn.functional.cross_entropy(out_s.logits[has_label], targets[rows].to(device)[has_label])
                    loss = loss + config.alpha_ce * ce
                if config.beta_kd:
                    kd = torch.nn.functional.kl_div(torch.log_softmax(out_s.logits / T, -1),
                                                    torch.softmax(cache["logits"][rows].to(device) / T, -1),
                                                    reduction="batchmean")
                    loss = loss + config.beta_kd * T * T * kd
                if config.gamma_hidden:
                    cls = torch.stack([h[:, 0] for h in out_s.hidden_states[1:]], dim=1)
                    if projection is not None:
                        cls = projection(cls)
                    loss = loss + config.gamma_hidden * torch.nn.functional.mse_loss(cls, cache["hidden"][rows].to(device))
                if config.delta_attention:
                    with torch.no_grad():
                        t_batch = teacher_tok.pad({k: [teacher_enc[k][i] for i in rows] for k in teacher_enc.keys()},
                                                  return_tensors="pt").to(device)
                        t_attn = teacher_net(**t_batch, output_attentions=True).attentions
                    loss = loss + config.delta_attention * _attention_loss(
                        out_s.attentions, t_attn, teacher_layers, head_map, batch["attention_mask"])
                running = run.step(loss, state, params, optimizer, scheduler, running)
                progress.update(task, advance=1, loss=running, description=f"epoch {epoch + 1}")
            student_net.eval()
            probs = predict_proba(student_net, student_tok, split.calibration.texts, max_length)
            cal = float(np.mean([labels[i] == y for i, y in zip(probs.argmax(1), split.calibration.labels)]))
            improved = run.end_epoch(state, modules, student_net, cal, higher_is_better=True,
                                     row={"train_loss": running, "calibration_accuracy": cal})
            progress.console.print(f"epoch {epoch + 1}: loss {running:.4f}, calibration accuracy {cal:.4f}"
                                   + (" (best)" if improved else ""))

    teacher_net.to("cpu")
    run.load_best(student_net)
    student_net.to("cpu").eval()
    probs = predict_proba(student_net, student_tok, split.test.texts, max_length)
    correct = int(sum(labels[i] == y for i, y in zip(probs.argmax(1), split.test.labels)))
    low, high = accuracy_interval(correct, len(split.test))
    record = {
        "kind": "edgeshrink-model", "task": "text-classification", "labels": labels, "max_length": max_length,
        "source": {"teacher": str(teacher_dir.resolve()), "student": str(student_dir.resolve())},
        "data": split.data_record(),
        "prune": student_record.get("prune"),
        "distill": config.to_dict(), "history": state["history"],
        "train_seconds": round(time.perf_counter() - started, 1), "train_examples": len(train),
        "augmented_examples": len(texts) - len(train),
        "parameters": _param_count(student_net),
        "test": {"accuracy": correct / len(split.test), "correct": correct, "n": len(split.test), "ci95": [low, high]},
    }

    def write(final: Path) -> None:
        student_net.save_pretrained(final)
        student_tok.save_pretrained(final)
        (final / RECORD_NAME).write_text(json.dumps(record, indent=2))

    run.finish(out, write)
    return record
