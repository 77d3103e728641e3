"""Knowledge distillation of a (pruned) text classifier from its teacher.

    from edgeshrink.compress.distill import distill
    from edgeshrink.compress.distill.encoder import DistillConfig
    record = distill("runs/cloud", "runs/student", "runs/device", DistillConfig(epochs=5), data="sentiment-movies")

loss = α·CE(student, labels) + β·T²·KL(teacher/T ‖ student/T) + γ·MSE(proj(student [CLS] states), teacher [CLS] states)
       + δ·MSE(student attention maps, teacher attention maps)

Hidden states are matched at the [CLS] position only (student layer i ↔ the teacher layer it was cut
from), so the loss stays valid when the student's vocabulary was pruned and a word tokenizes
differently. Teacher logits and states are computed once and cached. The optional attention-map loss
(TinyBERT's) compares every kept head with the teacher head it was cut from, so it runs the teacher on
each batch (about twice the time) and needs the student to tokenize the train texts exactly like the
teacher (true for a vocabulary pruned on the same train split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeshrink.compress.augment import AugmentConfig, augment_texts
from edgeshrink.compress.distill import check_smaller
from edgeshrink.config import Config
from edgeshrink.data import DataConfig, SplitConfig, load_data, split_examples
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.finetune import scored
from edgeshrink.models.sources import check_labels, read_record, resolve_model, weights_sha256
from edgeshrink.models.torch_text import shuffled_length_batches


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


def _encode(tokenizer, texts, max_length):
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return enc, [len(ids) for ids in enc["input_ids"]]


def _pad(tokenizer, enc, rows: list[int], device):
    return tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()}, return_tensors="pt").to(device)


def _head_map(student_record: dict, teacher_net, student_net) -> list[list[int]]:
    """For each student layer (depth), the teacher head each of its heads was cut from."""
    from edgeshrink.models import arch

    family = arch.family_of(student_net.config)
    family.check("distill_attention")
    blocks = family.block_list(student_net)
    teacher_heads = family.attention_of(family.block_list(teacher_net)[0]).heads
    pruned = (student_record.get("prune") or {}).get("pruned_heads") or {}
    out = []
    for i in range(student_net.config.num_hidden_layers):
        block = 0 if family.shared_blocks else i
        kept = [h for h in range(teacher_heads) if h not in set(pruned.get(str(block), []))]
        if len(kept) != family.attention_of(blocks[block]).heads:
            raise EdgeshrinkError(f"cannot tell which teacher heads student layer {i} kept: its prune record is missing")
        out.append(kept)
    return out


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
            out = teacher(**_pad(tokenizer, enc, rows, device), output_hidden_states=True)
            logits[rows] = out.logits.float().cpu()
            hidden[rows] = torch.stack([out.hidden_states[layer + 1][:, 0] for layer in layers], dim=1).float().cpu()
    return logits, hidden


class EncoderDistillation:
    """The classifier's part of distillation (see the module doc); compress/distill's ``distill`` runs it."""

    higher_is_better = True  # calibration accuracy

    def __init__(self, teacher: str | Path, student: str | Path, config: DistillConfig, data: DataConfig | str):
        from edgeshrink.models.torch_text import load_classifier

        self.config = config
        teacher_dir, student_dir = resolve_model(teacher), resolve_model(student)
        attn = "eager" if config.delta_attention else None  # only eager attention returns its maps
        teacher_net, teacher_tok = load_classifier(teacher_dir, attn_implementation=attn)
        student_net, student_tok = load_classifier(student_dir, attn_implementation=attn)
        if config.gamma_hidden:
            from edgeshrink.models import arch

            arch.family_of(student_net.config).check("distill_hidden")
        extra = set(student_tok.get_vocab()) - set(teacher_tok.get_vocab())
        if extra:
            raise EdgeshrinkError(f"the student's tokenizer does not match the teacher's: {len(extra)} tokens the "
                                  f"teacher does not have (e.g. {sorted(extra)[:3]})")
        check_smaller(student_net, teacher_net, "edgeshrink prune")
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
            raise EdgeshrinkError(f"the student {student_dir} was cut from another model than {teacher_dir} (weights "
                                  f"sha256 {cut_from[:12]}): distill it from that teacher, whose layers and heads it "
                                  "maps to")
        kept = (student_record.get("prune") or {}).get("kept_layers") or list(range(student_net.config.num_hidden_layers))
        teacher_net.to(config.device)
        student_net.to(config.device)
        self.teacher, self.student, self.tokenizer, self.teacher_tok = teacher_net, student_net, student_tok, teacher_tok
        self.teacher_dir, self.student_dir, self.student_record = teacher_dir, student_dir, student_record
        self.labels, self.max_length, self.split, self.train = labels, max_length, split, train
        self.teacher_layers = [*kept]  # student layer i was teacher layer kept[i]
        self.fingerprint = {"config": config.to_dict(), "teacher": str(teacher_dir.resolve()),
                            "student": str(student_dir.resolve()), "split": split.sha256}

    @staticmethod
    def check_data(data: DataConfig | str, config: DistillConfig) -> None:
        """Fail now on data that cannot be read (before a student is built for this run)."""
        load_data(data)

    def prepare(self, run) -> None:
        """The train texts (and augmented ones), the teacher's cached outputs, the targets, the encodings."""
        import torch

        config, device, train = self.config, self.config.device, self.train
        mask_token = self.tokenizer.mask_token or self.tokenizer.unk_token
        texts = list(train.texts) + augment_texts(list(train.texts), config.augment, mask_token)
        self.labelled = torch.zeros(len(texts), dtype=torch.bool)
        self.labelled[:len(train)] = True
        self.cache = run.cached("teacher_outputs.pt", lambda: dict(zip(("logits", "hidden"), _teacher_outputs(
            self.teacher, self.teacher_tok, texts, self.max_length, 64, self.teacher_layers, device))))
        self.head_map = _head_map(self.student_record, self.teacher, self.student) if config.delta_attention else None
        if not config.delta_attention:
            self.teacher.to("cpu")
        label_index = {name: i for i, name in enumerate(self.labels)}
        if config.label_free:
            self.targets, self.labelled[:] = self.cache["logits"].argmax(1), True
        else:
            self.targets = torch.tensor([label_index[y] for y in train.labels] + [0] * (len(texts) - len(train)))
        self.enc, self.lengths = _encode(self.tokenizer, texts, self.max_length)
        if config.delta_attention:
            self.teacher_enc, teacher_lengths = _encode(self.teacher_tok, texts, self.max_length)
            differ = sum(a != b for a, b in zip(self.lengths, teacher_lengths))
            if differ:
                raise EdgeshrinkError(f"the attention-map loss needs the student to tokenize like the teacher, but "
                                      f"{differ} train texts tokenize to a different length; prune the vocabulary on "
                                      f"this train split, or set delta_attention to 0")
            self.teacher.eval()
        self.examples = len(texts)
        hidden_sizes = self.student.config.hidden_size, self.teacher.config.hidden_size
        self.projection = torch.nn.Linear(*hidden_sizes).to(device) \
            if config.gamma_hidden > 0 and hidden_sizes[0] != hidden_sizes[1] else None
        self.modules = {"projection": self.projection}

    def parameters(self) -> list:
        return list(self.student.parameters()) + (list(self.projection.parameters()) if self.projection else [])

    def start(self, state: dict) -> None:
        pass

    def batches(self, rng) -> list[list[int]]:
        return shuffled_length_batches(self.lengths, self.config.batch_size, rng)

    def loss(self, rows: list[int]):
        import torch

        config, device, cache, T = self.config, self.config.device, self.cache, self.config.temperature
        batch = _pad(self.tokenizer, self.enc, rows, device)
        out_s = self.student(**batch, output_hidden_states=config.gamma_hidden > 0,
                             output_attentions=config.delta_attention > 0)
        loss = torch.zeros((), device=device)
        has_label = self.labelled[rows].to(device)
        if config.alpha_ce and bool(has_label.any()):
            ce = torch.nn.functional.cross_entropy(out_s.logits[has_label], self.targets[rows].to(device)[has_label])
            loss = loss + config.alpha_ce * ce
        if config.beta_kd:
            kd = torch.nn.functional.kl_div(torch.log_softmax(out_s.logits / T, -1),
                                            torch.softmax(cache["logits"][rows].to(device) / T, -1),
                                            reduction="batchmean")
            loss = loss + config.beta_kd * T * T * kd
        if config.gamma_hidden:
            cls = torch.stack([h[:, 0] for h in out_s.hidden_states[1:]], dim=1)
            if self.projection is not None:
                cls = self.projection(cls)
            loss = loss + config.gamma_hidden * torch.nn.functional.mse_loss(cls, cache["hidden"][rows].to(device))
        if config.delta_attention:
            with torch.no_grad():
                t_batch = _pad(self.teacher_tok, self.teacher_enc, rows, device)
                t_attn = self.teacher(**t_batch, output_attentions=True).attentions
            loss = loss + config.delta_attention * _attention_loss(
                out_s.attentions, t_attn, self.teacher_layers, self.head_map, batch["attention_mask"])
        return loss

    def evaluate(self, started: float) -> tuple[float, dict, str]:
        from edgeshrink.models.torch_text import predict_proba

        probs = predict_proba(self.student, self.tokenizer, self.split.calibration.texts, self.max_length)
        cal = float(np.mean([self.labels[i] == y for i, y in zip(probs.argmax(1), self.split.calibration.labels)]))
        return cal, {"calibration_accuracy": cal}, f"calibration accuracy {cal:.4f}"

    def finish(self) -> None:
        """Nothing to change in the best epoch's student before it is saved."""

    def record(self, state: dict, seconds: float) -> dict:
        from edgeshrink.models.torch_text import predict_proba

        split, labels = self.split, self.labels
        probs = predict_proba(self.student, self.tokenizer, split.test.texts, self.max_length)
        correct = int(sum(labels[i] == y for i, y in zip(probs.argmax(1), split.test.labels)))
        return {
            "kind": "edgeshrink-model", "task": "text-classification", "labels": labels, "max_length": self.max_length,
            "source": {"teacher": str(self.teacher_dir.resolve()), "student": str(self.student_dir.resolve())},
            "data": split.data_record(),
            "prune": self.student_record.get("prune"),
            "distill": self.config.to_dict(), "history": state["history"],
            "train_seconds": seconds, "train_examples": len(self.train),
            "augmented_examples": self.examples - len(self.train),
            "parameters": int(sum(p.numel() for p in self.student.parameters())),
            "test": scored(correct, len(split.test)),
        }


def describe(record: dict, out) -> str:
    test = record["test"]
    return (f"student {out}: test accuracy {100 * test['accuracy']:.2f}% [95% CI {100 * test['ci95'][0]:.1f}, "
            f"{100 * test['ci95'][1]:.1f}], {record['parameters'] / 1e6:.2f}M parameters, "
            f"{record['train_seconds']:.0f} s, {len(record['history'])} epochs")
