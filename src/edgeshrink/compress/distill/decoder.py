"""Heal a pruned causal LM by distillation from the model it was cut from: label-free, on plain text.

    from edgeshrink.compress.distill import distill
    from edgeshrink.compress.distill.decoder import LLMDistillConfig
    record = distill("smollm2", "runs/smollm2-drop8", "runs/smollm2-drop8-healed",
                     LLMDistillConfig(train_tokens=200_000, epochs=2), data="bbc-news")

loss = β·T²·KL(teacher/T ‖ student/T) + α·CE(student, next token) + γ·hidden-state loss

The train part of a text split (``data``, e.g. the BBC article bodies, plus that of any further texts) is packed
into sequences of ``sequence_tokens`` tokens (documents joined by eos; the tokenizer's BOS, if it has one,
starts every sequence). The teacher runs once over them and its ``top_k`` next-token log-probabilities at
temperature T are cached; the KL is taken over those k tokens plus one bucket for the rest of the vocabulary, so
it is an exact divergence between the two distributions coarsened the same way and the teacher does not run
every step. The optional hidden-state loss (γ > 0) compares the output of student block i with that of the
teacher block it was cut from (the prune record's ``kept_blocks``), as MSE over the teacher's mean square, and
runs the teacher on every batch. The vocabulary tables (the tied embedding and LM head) are frozen unless
``train_embeddings``: that keeps them on a GGUF's grid for INT4, and skips the largest gradient.
``precision: auto`` trains under bfloat16 autocast where the CPU has bf16 instructions (AMX or AVX512-BF16),
else in fp32; weights stay fp32. Early stop is on calibration perplexity (fp32, on windows of the calibration
part).

``quantization_aware``: the student trains through the INT4 grid ``quantize`` will write (compress/quantize/
aware.py: every Linear and vocabulary table, 4 bits, blocks of ``quantization_block_size`` along the inputs,
integer zero points, straight-through gradients); the saved weights are their grid values, and the record says
so, for ``export`` to carry into the bundle and ``quantize`` to read the codes back instead of re-rounding.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgeshrink.compress.distill import check_smaller
from edgeshrink.compress.quantize.config import BlockSize, without_training_grid
from edgeshrink.config import Config
from edgeshrink.data import SplitConfig
from edgeshrink.errors import EdgeshrinkError


class LLMDistillConfig(Config):
    version: int = 1
    epochs: int = Field(2, ge=1)
    sequence_tokens: int = Field(256, ge=8)  # tokens per training sequence
    batch_size: int = Field(4, ge=1)  # sequences per step
    train_tokens: int | None = Field(200_000, ge=1)  # training tokens per epoch (None: the whole train part)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(64, ge=1)  # teacher log-probabilities cached per position
    beta_kd: float = Field(1.0, ge=0)  # weight of the KL to the teacher
    alpha_ce: float = Field(0.0, ge=0)  # weight of next-token cross-entropy on the text itself
    gamma_hidden: float = Field(0.0, ge=0)  # weight of the hidden-state loss (runs the teacher every step)
    train_embeddings: bool = False  # also train the vocabulary tables (embedding, LM head)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    patience: int = Field(1, ge=1)  # epochs without a lower calibration perplexity before stopping
    calibration_windows: int = Field(16, ge=1)  # windows of sequence_tokens scored after every epoch
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    quantization_aware: bool = False  # train through the INT4 grid quantize writes (see the module doc)
    quantization_block_size: BlockSize = 32  # its block along the inputs: quantize's --block-size must match
    split: SplitConfig = SplitConfig()

    def key_form(self) -> dict:
        return without_training_grid(self.to_dict())

    def model_post_init(self, _context) -> None:
        if self.alpha_ce + self.beta_kd + self.gamma_hidden == 0:
            raise ValueError("at least one of beta_kd, alpha_ce, gamma_hidden must be positive")


def pack_sequences(tokenizer, texts: list[str], sequence_tokens: int, max_tokens: int | None) -> list[list[int]]:
    """Documents joined by eos and cut into sequences of ``sequence_tokens`` (BOS first where the tokenizer
    adds one); the last partial sequence is dropped; at most ``max_tokens`` tokens in all."""
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]
    body = sequence_tokens - len(prefix)
    if body < 2:
        raise EdgeshrinkError(f"sequence_tokens {sequence_tokens} leaves no room after the {len(prefix)} prefix tokens")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    sequences, stream = [], []
    limit = math.inf if max_tokens is None else max_tokens // sequence_tokens
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        while len(stream) >= body and len(sequences) < limit:
            sequences.append(prefix + stream[:body])
            stream = stream[body:]
        if len(sequences) >= limit:
            break
    return sequences


def topk_kl(student_logits, values, indices, temperature: float):
    """Mean KL(teacher ‖ student) per token over the teacher's top-k tokens plus one bucket for the rest.

    ``values``: the teacher's top-k log-probabilities at ``temperature``; ``indices``: their token ids."""
    import torch

    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q_k = log_q.gather(-1, indices.long())
    log_p_k = values.float()
    p_k = log_p_k.exp()
    p_rest = (1 - p_k.sum(-1)).clamp_min(1e-8)
    q_rest = (1 - log_q_k.exp().sum(-1)).clamp_min(1e-8)
    kl = (p_k * (log_p_k - log_q_k)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
    return kl.mean()


def _hidden_loss(student_hidden, teacher_hidden, teacher_blocks: list[int]):
    """MSE between each student block's output and its teacher block's, over the teacher's mean square.

    The last student block is left out: transformers returns the final-norm output there, and the KL covers it."""
    total = 0.0
    pairs = list(enumerate(teacher_blocks))[:-1]
    for i, t in pairs:
        target = teacher_hidden[t + 1].float()
        total = total + ((student_hidden[i + 1].float() - target) ** 2).mean() / (target ** 2).mean().clamp_min(1e-8)
    return total / max(len(pairs), 1)


def _teacher_blocks(student_record: dict, student_net, teacher_net) -> list[int]:
    """For each student block, the teacher block it was cut from."""
    prune = student_record.get("prune") or {}
    kept = prune.get("kept_blocks")
    if kept is None and student_net.config.num_hidden_layers == teacher_net.config.num_hidden_layers:
        kept = list(range(student_net.config.num_hidden_layers))
    if kept is None or len(kept) != student_net.config.num_hidden_layers:
        raise EdgeshrinkError("the hidden-state loss needs to know which teacher block each student block came "
                              "from, and the student has no prune record that says: set gamma_hidden to 0")
    return kept


def calibration_perplexity(model, windows, device: str) -> float:
    """Perplexity of ``model`` on ``windows`` (compress.lm_eval.Window), fp32, one window at a time."""
    import torch

    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for w in windows:
            ids = torch.tensor([w.ids], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0, w.scored_from - 1:-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, w.scored_from:], reduction="sum"))
            tokens += len(w.ids) - w.scored_from
    return math.exp(nll / tokens)


def _texts(data) -> list[str]:
    """The text names ``data`` gives: one text or several, each a name, a path or a DataConfig naming it."""
    items = list(data) if isinstance(data, (list, tuple)) else [data]
    return [getattr(item, "source", item) for item in items]


class DecoderDistillation:
    """The causal LM's part of distillation (see the module doc); compress/distill's ``distill`` runs it.
    ``data``: a text (its train part trains, its calibration part scores), or several (the first calibrates)."""

    higher_is_better = False  # calibration perplexity
    progress = None  # distill's progress(message) callback, for the teacher pass (None: a rich bar)

    def __init__(self, teacher: str | Path, student: str | Path, config: LLMDistillConfig, data):
        import torch

        from edgeshrink.compress.lm_eval import text_windows
        from edgeshrink.compress.trainer import choose_precision
        from edgeshrink.data.lm_text import load_lm_text
        from edgeshrink.models.llm import import_llm, load_causal_lm
        from edgeshrink.models.sources import read_record

        self.config = config
        device = config.device
        teacher_dir, student_dir = import_llm(teacher), import_llm(student)
        teacher_net, teacher_tok = load_causal_lm(teacher_dir, device)
        student_net, student_tok = load_causal_lm(student_dir, device)
        t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
        if t_vocab != s_vocab:
            differ = len(set(t_vocab.items()) ^ set(s_vocab.items()))
            raise EdgeshrinkError(f"the student's tokenizer differs from the teacher's ({len(s_vocab)} vs "
                                  f"{len(t_vocab)} tokens, {differ} entries differ): distillation compares next-token "
                                  "distributions over one vocabulary, so the student must be cut from the teacher")
        if student_net.config.vocab_size != teacher_net.config.vocab_size:
            raise EdgeshrinkError(f"the student's output has {student_net.config.vocab_size} tokens, the teacher's "
                                  f"{teacher_net.config.vocab_size}")
        if not config.quantization_aware:  # healing through the INT4 grid is worth it at the teacher's size too
            check_smaller(student_net, teacher_net, "edgeshrink prune --drop-blocks")
        if config.quantization_aware:
            from edgeshrink.compress.quantize.aware import check_student

            check_student(student_net, config.quantization_block_size)  # before the teacher pass
        student_record = read_record(student_dir)
        self.teacher_blocks = _teacher_blocks(student_record, student_net, teacher_net) if config.gamma_hidden else None
        self.precision = precision = choose_precision(config.precision, device)
        self.autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
        texts = _texts(data)
        train_parts = [load_lm_text(t, "train", config.split) for t in texts]
        sequences = pack_sequences(student_tok, [d for part in train_parts for d in part.texts],
                                   config.sequence_tokens, config.train_tokens)
        if len(sequences) < config.batch_size:
            raise EdgeshrinkError(f"the train text gives {len(sequences)} sequences of {config.sequence_tokens} "
                                  f"tokens, fewer than one batch ({config.batch_size})")
        calibration = load_lm_text(texts[0], "calibration", config.split)
        self.windows = text_windows(student_tok.backend_tokenizer, calibration, config.calibration_windows,
                                    config.sequence_tokens)
        self.teacher, self.student, self.tokenizer = teacher_net, student_net, student_tok
        self.teacher_dir, self.student_dir, self.student_record = teacher_dir, student_dir, student_record
        self.train_parts, self.sequences, self.examples = train_parts, sequences, len(sequences)
        self.fingerprint = {"config": config.to_dict(), "teacher": str(Path(teacher_dir).resolve()),
                            "student": str(Path(student_dir).resolve()), "precision": precision,
                            "text": [{"name": p.name, "split": p.split["sha256"], "documents": len(p)}
                                     for p in train_parts]}
        self.modules = {}
        self.quantization_aware = None  # the grid the saved weights lie on (finish), for the record
        # Frozen vocabulary tables of a model imported from a GGUF are left on that GGUF's grid (quantize keeps it;
        # SmolLM2's table is Q8_0), not brought to 4 bits: only the weights that train go through the INT4 grid.
        source = student_record.get("source")
        self.keeps_gguf_tables = bool(config.quantization_aware and not config.train_embeddings
                                      and isinstance(source, dict) and source.get("gguf"))

    @staticmethod
    def check_data(data, config: LLMDistillConfig) -> None:
        """Fail now on a text that cannot be read (before a student is built for this run)."""
        from edgeshrink.data.lm_text import load_lm_text

        for text in _texts(data):
            load_lm_text(text, "train", config.split)

    def prepare(self, run) -> None:
        """The teacher's top-k log-probabilities (cached once), the frozen vocabulary tables."""
        import torch

        self.ids = torch.tensor(self.sequences)
        self.cache = run.cached("teacher_topk.pt", self._teacher_topk)
        if not self.config.gamma_hidden:
            self.teacher.to("cpu")
        if not self.config.train_embeddings:
            student = self.student
            for table in {id(t): t for t in (student.get_input_embeddings(), student.get_output_embeddings())
                          if t is not None}.values():
                table.weight.requires_grad_(False)
        if self.config.quantization_aware:  # before a checkpoint is resumed: its weights have these names
            from edgeshrink.compress.quantize.aware import fake_quantized

            fake_quantized(self.student, self.config.quantization_block_size, frozen=not self.config.train_embeddings,
                           keep_tables=self.keeps_gguf_tables)

    def _teacher_topk(self) -> dict:
        import torch
        from edgeshrink.compress.trainer import training_bar

        config, device, count = self.config, self.config.device, len(self.sequences)
        values = torch.zeros(count, config.sequence_tokens - 1, config.top_k, dtype=torch.float16)
        indices = torch.zeros(count, config.sequence_tokens - 1, config.top_k, dtype=torch.int32)
        with training_bar("teacher", self.progress) as bar, torch.inference_mode():
            task = bar.add_task("top-k log-probabilities", total=count, loss=float("nan"))
            for start in range(0, count, config.batch_size):
                batch = self.ids[start:start + config.batch_size].to(device)
                with self.autocast():
                    logits = self.teacher(input_ids=batch, use_cache=False).logits[:, :-1]
                top = torch.log_softmax(logits.float() / config.temperature, dim=-1).topk(config.top_k, dim=-1)
                values[start:start + len(batch)] = top.values.half().cpu()
                indices[start:start + len(batch)] = top.indices.int().cpu()
                bar.update(task, advance=len(batch))
        return {"values": values, "indices": indices,
                "calibration_perplexity": calibration_perplexity(self.teacher, self.windows, device)}

    def parameters(self) -> list:
        return [p for p in self.student.parameters() if p.requires_grad]

    def start(self, state: dict) -> None:
        self.before = calibration_perplexity(self.student, self.windows, self.config.device) if state["epoch"] == 0 \
            else state["history"][0]["calibration_perplexity_before"]

    def batches(self, rng) -> list[list[int]]:
        """Sequence indices in a random order, cut into batches."""
        order = list(range(len(self.sequences)))
        rng.shuffle(order)
        return [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]

    def loss(self, rows: list[int]):
        import torch

        config, device, cache, T = self.config, self.config.device, self.cache, self.config.temperature
        batch = self.ids[rows].to(device)
        with self.autocast():
            out_s = self.student(input_ids=batch, use_cache=False, output_hidden_states=config.gamma_hidden > 0)
        logits = out_s.logits[:, :-1]
        loss = torch.zeros((), device=device)
        if config.beta_kd:
            kd = topk_kl(logits, cache["values"][rows].to(device), cache["indices"][rows].to(device), T)
            loss = loss + config.beta_kd * T * T * kd
        if config.alpha_ce:
            ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            loss = loss + config.alpha_ce * ce
        if config.gamma_hidden:
            with torch.no_grad(), self.autocast():
                t_hidden = self.teacher(input_ids=batch, use_cache=False, output_hidden_states=True).hidden_states
            loss = loss + config.gamma_hidden * _hidden_loss(out_s.hidden_states, t_hidden, self.teacher_blocks)
        return loss

    def evaluate(self, started: float) -> tuple[float, dict, str]:
        ppl = calibration_perplexity(self.student, self.windows, self.config.device)
        row = {"calibration_perplexity": ppl, "calibration_perplexity_before": self.before,
               "seconds": round(time.perf_counter() - started, 1)}
        return ppl, row, (f"calibration perplexity {ppl:.2f} (before healing {self.before:.2f}, "
                          f"teacher {self.cache['calibration_perplexity']:.2f})")

    def finish(self) -> None:
        """The best epoch's student, saved as it trained: its weights replaced by their INT4 grid values."""
        if self.config.quantization_aware:
            from edgeshrink.compress.quantize.aware import bake

            self.quantization_aware = bake(self.student, self.config.quantization_block_size,
                                           kept_tables=self.keeps_gguf_tables)

    def record(self, state: dict, seconds: float) -> dict:
        config, sequences = self.config, self.sequences
        return {
            "task": "text-generation",
            "source": self.student_record.get("source"),  # a GGUF source: INT4 keeps its grid for the frozen tables
            "prune": self.student_record.get("prune"),
            "quantization_aware": self.quantization_aware,  # export carries it into the bundle manifest
            "distill": {"teacher": str(Path(self.teacher_dir).resolve()), "student": str(Path(self.student_dir).resolve()),
                        "config": config.to_dict(), "precision": self.precision, "history": state["history"],
                        "train_sequences": len(sequences), "train_tokens": len(sequences) * config.sequence_tokens,
                        "text": [{"name": p.name, "part": "train", "split_sha256": p.split["sha256"]}
                                 for p in self.train_parts],
                        "calibration_perplexity": {"before": self.before, "after": state["best"],
                                                   "teacher": self.cache["calibration_perplexity"],
                                                   "windows": len(self.windows)},
                        "train_seconds": seconds,
                        "parameters": int(sum(p.numel() for p in self.student.parameters()))},
        }


def describe(record: dict, out) -> str:
    d = record["distill"]
    ppl = d["calibration_perplexity"]
    qat = record.get("quantization_aware")
    through = f" through its INT4 grid (blocks of {qat['block_size']})" if qat else ""
    return (f"student {out}: calibration perplexity {ppl['after']:.2f} (before healing {ppl['before']:.2f}, "
            f"teacher {ppl['teacher']:.2f}), {d['parameters'] / 1e6:.2f}M parameters, {d['train_tokens']:,} "
            f"tokens x {len(d['history'])} epochs{through}, {d['train_seconds']:.0f} s ({d['precision']})")
