"""A language-model bundle as a classifier: prompted, answered by label log-likelihood (torch-free).

    from edgeshrink.runtime import load
    from edgeshrink.runtime.prompted import PromptedLLM
    llm = PromptedLLM(load("runs/smollm2-int4"), prompt)      # prompt: a PromptConfig dict (route/prompts.py)
    result = llm.predict(["a gorgeous, witty film"])
    result.labels, result.probabilities, result.signals["mean-logprob"]

For each text the prompt is prefilled once; every label's answer tokens are then scored from the cached
keys and values (one more step per answer token after the first). ``probabilities`` is the softmax of
the labels' summed answer log-probabilities. ``signals`` holds, for the chosen label's answer tokens,
their mean and minimum log-probability and the negative mean entropy of the next-token distribution
(all over the whole vocabulary, means over tokens so length does not count) — the generation signals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.generate import log_softmax
from edgeshrink.runtime.predictor import Predictions, softmax

ANSWER_SIGNALS = ("mean-logprob", "min-logprob", "neg-mean-entropy")


def answer_signals(steps: list[tuple[float, float]]) -> dict:
    """The answer signals of one answer from its tokens' (log-probability, entropy); an empty answer is as
    unsure as possible."""
    if not steps:
        return dict.fromkeys(ANSWER_SIGNALS, -50.0)
    return {"mean-logprob": float(np.mean([lp for lp, _ in steps])), "min-logprob": float(min(lp for lp, _ in steps)),
            "neg-mean-entropy": -float(np.mean([h for _, h in steps]))}


class Prompter:
    """A prompt's token ids for one tokenizer: each label's answer tokens as they follow the prompt, and the
    room the context leaves for the text. Subclasses give ``encode(text, special) -> ids`` and
    ``token_ends(text)`` (each token's end offset); ``chat`` renders chat messages (None: a plain prompt).
    PromptedLLM is the runtime's, models/finetune/decoder.py's HFPrompter the training side's."""

    def __init__(self, prompt: dict, context_length: int, chat=None, add_special: bool = True):
        if not prompt.get("labels"):
            raise EdgeshrinkError("the prompt has no label set")
        self.prompt, self.chat, self.context_length = prompt, chat, context_length
        self.add_special = chat is None and add_special
        self.labels = list(prompt["labels"])
        self.answers = [prompt.get("answers", {}).get(label, label) for label in self.labels]
        # Answers are tokenized in context, so a leading space or a merge with the prompt's last characters
        # comes out as the model saw it in training.
        context = self.render("x")
        head = self.encode(context, False)
        self.answer_ids = []
        for word in self.answers:
            full = self.encode(context + word, False)
            self.answer_ids.append(full[len(head):] if full[:len(head)] == head else self.encode(word, False))
        if any(not ids for ids in self.answer_ids):
            raise EdgeshrinkError(f"an answer word tokenizes to nothing: {self.answers}")
        # Room for the text: the context less the prompt around it, the longest answer and a margin of 2 for
        # merges at the text's edges. Inputs are cut to this or to max_text_tokens, whichever is shorter.
        overhead = len(self.encode(self.render(""), True))
        self.longest_answer = max(len(a) for a in self.answer_ids)
        room = context_length - overhead - self.longest_answer - 2
        if room < 1:
            raise EdgeshrinkError(f"the prompt ({overhead} tokens without the text) leaves no room in the context of "
                                  f"{context_length}: use fewer few-shot examples or a shorter prompt")
        self.text_limit = min(int(prompt.get("max_text_tokens", 256)), room)

    def messages(self, text: str) -> list[dict]:
        """The chat for ``text``: the system turn, the few-shot turns, then the question."""
        def user(t):
            return self.prompt["user"].replace("{labels}", ", ".join(self.answers)).replace("{text}", t)

        chat = [{"role": "system", "content": self.prompt["system"]}] if self.prompt.get("system") else []
        for shot_text, shot_label in self.prompt.get("shots", []):
            chat += [{"role": "user", "content": user(shot_text)},
                     {"role": "assistant", "content": self.prompt.get("answers", {}).get(shot_label, shot_label)}]
        return chat + [{"role": "user", "content": user(text)}]

    def render(self, text: str) -> str:
        """The prompt text for ``text``: through the chat template, else plain."""
        if self.chat is not None:
            return self.chat(self.messages(text))
        return "\n\n".join(m["content"] for m in self.messages(text)) + "\nAnswer: "

    def prompt_ids(self, text: str) -> tuple[list[int], bool]:
        """Token ids of the prompt for ``text`` (cut after its first ``text_limit`` tokens) and whether it was cut."""
        ends = self.token_ends(text)
        truncated = len(ends) > self.text_limit
        ids = self.encode(self.render(text[:ends[self.text_limit - 1]] if truncated else text), self.add_special)
        if len(ids) + self.longest_answer > self.context_length:
            raise EdgeshrinkError(f"the prompt ({len(ids)} tokens) does not fit the context of {self.context_length}")
        return ids, truncated


@dataclass
class PromptedPredictions(Predictions):
    signals: dict = field(default_factory=dict)  # name -> (n,) generation signal of the chosen answer
    answer_logliks: np.ndarray | None = None  # (n, labels) summed answer log-probabilities


class PromptedLLM(Prompter):
    """``predict(texts) -> PromptedPredictions`` over ``prompt["labels"]``, like a classifier bundle."""

    def __init__(self, generator, prompt: dict):
        self.generator, self.path = generator, generator.path
        self.progress = None  # optional callable(done, total), called after every text (long runs show it)
        super().__init__(prompt, generator.context_length,
                         generator.render_chat if generator.chat_template is not None else None,
                         generator.manifest["tokenizer"].get("add_special_tokens", True))

    def encode(self, text: str, special: bool) -> list[int]:
        return self.generator.tokenizer.encode(text, add_special_tokens=special).ids

    def token_ends(self, text: str) -> list[int]:
        return [end for _, end in self.generator.tokenizer.encode(text, add_special_tokens=False).offsets]

    def score(self, text: str) -> tuple[np.ndarray, list[list[tuple[float, float]]], bool]:
        """Per label: the summed answer log-probability; per label and answer token: (log-prob, entropy)."""
        g = self.generator
        ids, truncated = self.prompt_ids(text)
        logits, past = g._step(ids, g._empty_past(), len(ids))
        totals, per_token = [], []
        for answer in self.answer_ids:
            rows = [logits[-1]]  # the prompt's last position predicts the first answer token, and so on
            if len(answer) > 1:
                rows += list(g._step(answer[:-1], past, len(ids) + len(answer) - 1)[0])
            steps = [(float(lp[token]), float(-(np.exp(lp) * lp).sum()))
                     for lp, token in zip(map(log_softmax, rows), answer)]
            per_token.append(steps)
            totals.append(sum(lp for lp, _ in steps))
        return np.array(totals), per_token, truncated

    def predict(self, texts, batch_size: int = 1) -> PromptedPredictions:  # batch_size: the Predictor's signature
        texts = list(texts)
        logliks = np.zeros((len(texts), len(self.labels)))
        signals = {name: np.zeros(len(texts)) for name in ANSWER_SIGNALS}
        truncated = []
        for i, text in enumerate(texts):
            totals, per_token, cut = self.score(text)
            logliks[i] = totals
            for name, value in answer_signals(per_token[int(np.argmax(totals))]).items():
                signals[name][i] = value
            truncated.append(cut)
            if self.progress is not None:
                self.progress(i + 1, len(texts))
        probs = softmax(logliks)
        return PromptedPredictions([self.labels[j] for j in probs.argmax(1)], probs, truncated, signals=signals,
                                   answer_logliks=logliks)
