"""The architecture layer: what edgeshrink knows about each model family, in one registry.

    from edgeshrink.models.arch import family_of
    family = family_of(model.config)          # the "bert" entry, or a one-line error naming what is supported
    blocks = family.block_list(model)         # the transformer blocks that hold weights
    family.attention_of(blocks[0]).q          # the query projection of a block (and .k .v .o .heads)
    family.inputs(model.config)               # ["input_ids", "attention_mask"] for DistilBERT
    family.check("drop_layers")               # ALBERT refuses, naming the family and what does apply

Every verb asks this module where a family keeps its blocks, attention projections, FFN and
embeddings, which inputs it takes, how long an input may be, and which structured operations apply;
no verb names a family's module paths itself. Adding a family = one ``register(Family(...))`` entry;
it then joins the conformance tests (tests/test_conformance.py) and the table in docs/reference.md
(``edgeshrink families``).

Sizes come from the config through ``attribute_map`` (DistilBERT's ``dim``/``n_heads``/``n_layers``);
what transformers already knows (input embeddings, the base model) is derived, not stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from edgeshrink.errors import EdgeshrinkError

# The shortest usable length a model may have: the least max_length that finetune, export and distill take.
MIN_LENGTH = 8

# Structured operations, by the name verbs and error messages use.
OPERATIONS = {
    "drop_layers": "drop layers",
    "prune_heads": "prune attention heads",
    "prune_ffn": "prune FFN neurons",
    "prune_vocab": "prune the vocabulary",
    "distill_hidden": "hidden-state distillation",
    "distill_attention": "attention-map distillation",
}
ALL_OPERATIONS = frozenset(OPERATIONS)
# ONNX exporters of decoder LLMs (export/llm.py): onnxruntime-genai's model builder (fused GroupQueryAttention,
# ~340 nodes for SmolLM2) and optimum-onnx's text-generation-with-past (~7,400 nodes, unfused attention).
LLM_EXPORTERS = frozenset({"builder", "optimum"})

# Key in a pruned model's config.json: per student block, the teacher heads it kept. Configs of these
# families derive the head size from hidden size / heads, so fewer heads cannot be described by the
# config alone: the loader builds the model at full width, slices it to these heads, then loads weights.
KEPT_HEADS_KEY = "edgeshrink_kept_heads"


@dataclass(frozen=True, eq=False)  # identity equality: entries hold dicts, and each is registered once
class Family:
    """One model family. Paths are attribute paths: ``blocks`` from the base model, the rest from a block."""

    name: str
    model_types: tuple[str, ...]
    blocks: str  # the list of transformer blocks that hold weights, from the base model
    attention: str  # the self-attention module (holds the head count) inside a block
    q: str
    k: str
    v: str
    o: str  # attention output projection (its input is the heads' concatenated context)
    ffn_up: str
    ffn_down: str
    ffn_gate: str | None = None  # the gate projection of a gated FFN (SwiGLU/GeGLU), sliced like ffn_up
    ffn_size_key: str = "intermediate_size"
    heads_attr: str = "num_attention_heads"  # the attention module's head count
    width_attr: str = "all_head_size"  # the attention module's heads × head size
    extra_head_projections: tuple[str, ...] = ()  # other per-head projections, sliced like q/k/v when present
    token_type_ids: str = "yes"  # "yes" | "no" | "if-type-vocab" (DeBERTa-v3 has type_vocab_size 0)
    position_offset: str = "none"  # "padding-idx": positions start after padding_idx (RoBERTa, MPNet)
    fixed_padding_idx: int | None = None  # the padding_idx when the model fixes it whatever pad_token_id says
    #                                       (MPNet's is always 1); None: config.pad_token_id
    shared_blocks: bool = False  # one block's weights reused at every depth (ALBERT)
    shared_head_table: str | None = None  # an Embedding with one column per head, shared by every layer
    #                                      (MPNet's relative-position bias): the same heads are kept everywhere
    structure_requires: dict = field(default_factory=dict)  # config values the structured operations assume
    operations: frozenset[str] = ALL_OPERATIONS
    refusals: dict[str, str] = field(default_factory=dict)  # operation -> why it does not apply
    ort_fusion: str | None = "bert"  # the model type ORT's transformer fusions know it as (None: basic passes)
    tokenizer: str = "wordpiece"  # the tokenizer kind its checkpoints usually ship (tests build one)
    test_config: dict = field(default_factory=dict)  # a tiny config for the conformance tests
    label: str = ""  # display name
    kind: str = "encoder"  # "encoder" (text classifiers) | "decoder" (causal language models)
    notes: str = ""  # what a user should know (docs/reference.md table)
    llm_exporters: tuple[str, ...] = ()  # decoders: ONNX exporters that handle the family, preferred first
    # Decoders: the family's chat format, written at import when a GGUF carries none (Gemma 3 GGUFs often
    # don't), and the tokens that end a turn besides eos (Gemma's <end_of_turn>), added to the eos ids where
    # the vocabulary has them.
    chat_template: str | None = None
    stop_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("encoder", "decoder"):
            raise ValueError(f"{self.name}: kind must be encoder or decoder")
        if (self.kind == "decoder") != bool(self.llm_exporters) or not set(self.llm_exporters) <= LLM_EXPORTERS:
            raise ValueError(f"{self.name}: a decoder names its LLM exporters (of {sorted(LLM_EXPORTERS)}), "
                             "an encoder none")
        if self.token_type_ids not in ("yes", "no", "if-type-vocab"):
            raise ValueError(f"{self.name}: token_type_ids must be yes, no or if-type-vocab")
        if self.position_offset not in ("none", "padding-idx"):
            raise ValueError(f"{self.name}: position_offset must be none or padding-idx")
        if self.fixed_padding_idx is not None and self.position_offset != "padding-idx":
            raise ValueError(f"{self.name}: a fixed padding_idx applies to positions that start after it")
        if not self.operations <= ALL_OPERATIONS or set(self.refusals) != ALL_OPERATIONS - self.operations:
            raise ValueError(f"{self.name}: every operation that does not apply needs a reason in refusals")

    # -- paths -------------------------------------------------------------------------------------
    def base_of(self, model):
        """The module ``blocks`` is a path from: the base model (a causal LM whose ``base_model_prefix`` does not
        name its trunk, as Gemma3ForCausalLM's, is read through its ``model`` attribute)."""
        base = model.base_model
        if base is model and not hasattr(model, self.blocks.split(".")[0]) and hasattr(model, "model"):
            return model.model
        return base

    def block_list(self, model):
        """The ModuleList of blocks (for ALBERT: the one shared block, not one per depth)."""
        return module_at(self.base_of(model), self.blocks)

    def attention_of(self, block):
        attn = module_at(block, self.attention)
        return SimpleNamespace(module=attn, q=module_at(block, self.q), k=module_at(block, self.k), v=module_at(block, self.v),
                               o=module_at(block, self.o), heads=getattr(attn, self.heads_attr),
                               head_size=attn.attention_head_size)

    def ffn_of(self, block):
        return SimpleNamespace(up=module_at(block, self.ffn_up), down=module_at(block, self.ffn_down))

    # -- inputs and lengths ------------------------------------------------------------------------
    def inputs(self, config) -> list[str]:
        """The model inputs a tokenizer should produce for this family."""
        names = ["input_ids", "attention_mask"]
        if self.token_type_ids == "yes" or (self.token_type_ids == "if-type-vocab"
                                            and getattr(config, "type_vocab_size", 0) > 0):
            names.append("token_type_ids")
        return names

    def padding_idx(self, config) -> int | None:
        """The padding_idx this family's positions start after (None: they start at 0)."""
        if self.position_offset != "padding-idx":
            return None
        if self.fixed_padding_idx is not None:
            return self.fixed_padding_idx
        if getattr(config, "pad_token_id", None) is None:
            raise EdgeshrinkError(f"{self.label or self.name}: config.json has no pad_token_id, and this family's "
                                  "positions start after it")
        return int(config.pad_token_id)

    def max_length(self, config) -> int:
        """The longest input the position table allows (RoBERTa: 514 positions -> 512 tokens), or a one-line
        refusal where it holds fewer than MIN_LENGTH tokens."""
        positions = int(getattr(config, "max_position_embeddings", 512))
        padding_idx = self.padding_idx(config)
        usable = positions if padding_idx is None else positions - padding_idx - 1
        if usable < MIN_LENGTH:
            rule = "" if padding_idx is None else f" ({self.max_length_rule()})"
            raise EdgeshrinkError(f"{self.label or self.name}: max_position_embeddings {positions} leaves {usable} "
                                  f"usable tokens{rule}; at least {MIN_LENGTH} are needed")
        return usable

    def max_length_rule(self) -> str:
        if self.position_offset == "none":
            return "max_position_embeddings"
        if self.fixed_padding_idx is not None:
            return f"max_position_embeddings - {self.fixed_padding_idx + 1}"
        return "max_position_embeddings - pad_token_id - 1"

    def check_config(self, config) -> None:
        """Refuse, in one line, a config this family's models cannot run (a verb checks it on loading)."""
        self.max_length(config)
        # Only DeBERTa-v2/v3 ("if-type-vocab") leaves token types out; the others embed one for every token.
        if self.token_type_ids != "if-type-vocab" and getattr(config, "type_vocab_size", 1) < 1:
            raise EdgeshrinkError(f"{self.label or self.name}: type_vocab_size {config.type_vocab_size} leaves no "
                                  "token type, and this family embeds one for every token (at least 1 is needed)")

    # -- operations ---------------------------------------------------------------------------------
    @property
    def same_heads_every_layer(self) -> bool:
        return self.shared_head_table is not None

    def check_structure(self, config) -> None:
        """Refuse structured edits of a config the paths above do not describe (ALBERT with several groups)."""
        for key, value in self.structure_requires.items():
            if getattr(config, key, value) != value:
                raise EdgeshrinkError(f"{self.label or self.name}: structured pruning supports {key} = {value} "
                                      f"only; this model has {getattr(config, key)}")

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids of ``stop_tokens`` that ``tokenizer``'s vocabulary holds (a transformers tokenizer)."""
        vocab = tokenizer.get_vocab()
        return [vocab[t] for t in self.stop_tokens if t in vocab]

    def applies(self, operation: str) -> bool:
        return operation in self.operations

    def check(self, operation: str) -> None:
        """Refuse an operation that does not apply to this family, in one line naming what does."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        if not self.applies(operation):
            why = self.refusals.get(operation, "")
            does = ", ".join(OPERATIONS[o] for o in OPERATIONS if o in self.operations) or "nothing"
            raise EdgeshrinkError(f"{self.label or self.name}: cannot {OPERATIONS[operation]}"
                                  + (f" ({why})" if why else "") + f"; what applies: {does}")


def module_at(obj, path: str):
    """The submodule at a dotted path ("encoder.layer.0.attention"; digits index a list)."""
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    for model_type in family.model_types:
        if model_type in FAMILIES:
            raise ValueError(f"model type {model_type!r} registered twice")
        FAMILIES[model_type] = family
    return family


_BERT_PATHS = dict(blocks="encoder.layer", attention="attention.self", q="attention.self.query",
                   k="attention.self.key", v="attention.self.value", o="attention.output.dense",
                   ffn_up="intermediate.dense", ffn_down="output.dense")
_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)

register(Family(name="bert", label="BERT (MiniLM)", model_types=("bert",), **_BERT_PATHS, test_config=_TINY))
register(Family(name="electra", label="ELECTRA", model_types=("electra",), **_BERT_PATHS,
                test_config={**_TINY, "embedding_size": 16}))
register(Family(name="roberta", label="RoBERTa", model_types=("roberta",), **_BERT_PATHS, token_type_ids="no",
                position_offset="padding-idx", tokenizer="bpe",
                test_config={**_TINY, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1}))
register(Family(name="xlm-roberta", label="XLM-RoBERTa", model_types=("xlm-roberta",), **_BERT_PATHS,
                token_type_ids="no", position_offset="padding-idx", tokenizer="unigram",
                test_config={**_TINY, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "type_vocab_size": 1}))
register(Family(name="distilbert", label="DistilBERT", model_types=("distilbert",), blocks="transformer.layer",
                attention="attention", q="attention.q_lin", k="attention.k_lin", v="attention.v_lin",
                o="attention.out_lin", ffn_up="ffn.lin1", ffn_down="ffn.lin2", ffn_size_key="hidden_dim",
                heads_attr="n_heads", width_attr="dim", token_type_ids="no",
                test_config=dict(vocab_size=99, dim=32, n_layers=3, n_heads=4, hidden_dim=64,
                                 max_position_embeddings=64)))
register(Family(name="mpnet", label="MPNet", model_types=("mpnet",), blocks="encoder.layer", attention="attention.attn",
                q="attention.attn.q", k="attention.attn.k", v="attention.attn.v", o="attention.attn.o",
                ffn_up="intermediate.dense", ffn_down="output.dense", token_type_ids="no",
                position_offset="padding-idx", fixed_padding_idx=1,
                shared_head_table="encoder.relative_attention_bias", ort_fusion=None,
                notes="the same heads are kept in every layer (one relative-position bias table serves all)",
                test_config={**_TINY, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}))
register(Family(name="albert", label="ALBERT", model_types=("albert",), blocks="encoder.albert_layer_groups.0.albert_layers",
                attention="attention", q="attention.query", k="attention.key", v="attention.value",
                o="attention.dense", ffn_up="ffn", ffn_down="ffn_output", shared_blocks=True, tokenizer="unigram",
                structure_requires={"num_hidden_groups": 1, "inner_group_num": 1},
                operations=ALL_OPERATIONS - {"drop_layers"},
                refusals={"drop_layers": "its layers share one set of weights: fewer layers saves no parameters"},
                notes="heads and FFN neurons are cut from the one shared layer, so at every depth",
                test_config={**_TINY, "embedding_size": 16, "num_hidden_groups": 1, "inner_group_num": 1}))
register(Family(name="deberta-v2", label="DeBERTa-v2/v3", model_types=("deberta-v2",), blocks="encoder.layer",
                attention="attention.self", q="attention.self.query_proj", k="attention.self.key_proj",
                v="attention.self.value_proj", o="attention.output.dense", ffn_up="intermediate.dense",
                ffn_down="output.dense", extra_head_projections=("attention.self.pos_key_proj",
                                                                 "attention.self.pos_query_proj"),
                token_type_ids="if-type-vocab", tokenizer="unigram", ort_fusion=None,
                notes="no head_mask: heads are gated and sliced by edgeshrink (also pos_key/pos_query projections)",
                # DeBERTa-v3's shape: relative attention, no absolute positions, no token types.
                test_config={**_TINY, "relative_attention": True, "position_biased_input": False,
                             "pos_att_type": ["p2c", "c2p"], "max_relative_positions": -1, "position_buckets": 16,
                             "norm_rel_ebd": "layer_norm", "share_att_key": True, "type_vocab_size": 0}))


# Decoder language models (causal LMs): imported from a GGUF or an HF directory by models/llm.py, pruned by
# compress/prune/decoder.py (blocks; FFN neurons of the gated MLP; attention heads by whole KV groups, so that
# grouped-query attention stays valid) and healed by compress/distill/decoder.py.
_DECODER_REFUSALS = {"prune_vocab": "a decoder's vocabulary is also its output: not implemented",
                     "distill_attention": "not implemented for decoders; the hidden-state loss is"}
_DECODER_PATHS = dict(blocks="layers", attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj",
                      v="self_attn.v_proj", o="self_attn.o_proj", ffn_up="mlp.up_proj", ffn_down="mlp.down_proj",
                      ffn_gate="mlp.gate_proj", token_type_ids="no", ort_fusion=None, tokenizer="bpe", kind="decoder",
                      operations=frozenset({"drop_layers", "prune_ffn", "prune_heads", "distill_hidden"}),
                      llm_exporters=("builder", "optimum"), refusals=_DECODER_REFUSALS)
_TINY_DECODER = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=128)  # head size 16: GroupQueryAttention's minimum
register(Family(name="llama", label="Llama (SmolLM2)", model_types=("llama",), **_DECODER_PATHS,
                test_config=_TINY_DECODER))
register(Family(name="qwen2", label="Qwen2", model_types=("qwen2",), **_DECODER_PATHS, test_config=_TINY_DECODER))
# Gemma 3's own chat template (the one its Hugging Face checkpoints ship), for GGUFs that carry none.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
# onnxruntime-genai 0.13.2's builder graph of Gemma 3 270M keeps the greedy tokens (16/16) but its logits
# differ from PyTorch by 5.0e-2 (optimum's: 5.0e-4): optimum first.
register(Family(name="gemma3", label="Gemma 3 (text)", model_types=("gemma3_text",),
                **{**_DECODER_PATHS, "llm_exporters": ("optimum", "builder")},
                chat_template=GEMMA3_CHAT_TEMPLATE, stop_tokens=("<end_of_turn>",),
                notes="embeddings scaled by sqrt(hidden); sliding-window layers; <end_of_turn> ends a chat turn",
                test_config={**_TINY_DECODER, "head_dim": 16, "sliding_window": 16}))
register(Family(name="phi3", label="Phi-3", model_types=("phi3",),
                **{**_DECODER_PATHS, "q": "self_attn.qkv_proj", "k": "self_attn.qkv_proj", "v": "self_attn.qkv_proj",
                   "ffn_up": "mlp.gate_up_proj", "ffn_gate": None,
                   "operations": frozenset({"drop_layers", "distill_hidden"}),
                   "refusals": {**_DECODER_REFUSALS, "prune_ffn": "its fused gate_up_proj is not sliced yet",
                                "prune_heads": "its fused qkv_proj is not sliced yet"}},
                notes="fused qkv_proj and gate_up_proj",
                # Phi-3-mini-4k's shape (the builder takes max == original max positions as "no LongRoPE").
                test_config={**_TINY_DECODER, "pad_token_id": 0, "original_max_position_embeddings": 128}))


def unique_families(kind: str | None = None) -> list[Family]:
    """Each registered family once (a family may cover several model types), of one kind if given."""
    return [f for f in {family.name: family for family in FAMILIES.values()}.values() if kind in (None, f.kind)]


def family_of(config) -> Family:
    """The registry entry for a transformers config (or a config.json dict), or a one-line error."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise EdgeshrinkError(f"model type {model_type!r} is not a supported model family (supported: "
                          f"{', '.join(sorted(FAMILIES))})")


def _inputs_text(family: Family) -> str:
    text = "input_ids, attention_mask"
    if family.kind == "decoder":
        return text + ", past key/values (+ position_ids in optimum's graphs)"
    if family.token_type_ids == "yes":
        return text + ", token_type_ids"
    if family.token_type_ids == "if-type-vocab":
        return text + " (+ token_type_ids if type_vocab_size > 0)"
    return text


# The short names edgeshrink resolves (models/sources.py's MODEL_PACKAGES, models/llm.py's LLM_PACKAGES) and the
# model_type each names, so `families` can say which family a short name is (tests/test_tasks.py checks the sets
# agree).
SHORT_NAMES = {"minilm": "bert", "smollm2": "llama", "gemma3-270m": "gemma3_text"}


def short_names(family) -> list[str]:
    return [name for name, model_type in SHORT_NAMES.items() if model_type in family.model_types]


def families_data() -> list[dict]:
    """The registry as data (``edgeshrink families --json``)."""
    out = []
    for family in unique_families():
        out.append({"name": family.name, "label": family.label, "kind": family.kind, "model_types": list(family.model_types),
                    "short_names": short_names(family),
                    "inputs": _inputs_text(family), "usable_length": family.max_length_rule(),
                    "tokenizer_in_tests": family.tokenizer, "ort_fusion": family.ort_fusion,
                    "operations": {op: family.applies(op) for op in OPERATIONS},
                    "refusals": dict(family.refusals), "notes": family.notes})
    return out


def families_table() -> str:
    """The reference page's table of families and the operations that apply (generated from the registry).

    Every family takes every verb (finetune, export, quantize, distill, sparsify, route, bench, serve);
    the columns are the structured operations, which differ by family.
    """
    rows = []
    for family in unique_families():
        cells = ["yes" if family.applies(op) else f"no: {family.refusals.get(op, 'n/a')}" for op in OPERATIONS]
        rows.append(f"| {family.label} | {family.kind} | `{'`, `'.join(family.model_types)}` | {_inputs_text(family)} | "
                    f"{family.max_length_rule()} | {family.tokenizer} | {family.ort_fusion or 'basic only'} | "
                    + " | ".join(cells) + f" | {family.notes} |")
    head = ("| family | kind | model_type | inputs | usable length | tokenizer in tests | ORT fusion | "
            + " | ".join(OPERATIONS.values()) + " | notes |\n|" + "---|" * (8 + len(OPERATIONS)))
    return head + "\n" + "\n".join(rows)


if __name__ == "__main__":
    print(families_table())
