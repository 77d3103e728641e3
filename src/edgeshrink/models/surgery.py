"""Structure edits of a model, by the registry's paths (models/arch.py): head gates, FFN activations, and
physical removal of heads, FFN neurons and blocks. Shared by prune, distill and the loader.

    from edgeshrink.models import arch, surgery
    family = arch.family_of(model.config)
    surgery.keep_heads(model, family, {0: [0, 2], 1: [1, 3]})   # block -> heads kept
"""

from __future__ import annotations

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.arch import Family, module_at


def head_gates(model, family: Family):
    """A gate per (block, head) that scales each head's context before the output projection.

    Returns (gates, remove): gates is a leaf tensor of ones (blocks × heads) whose gradient is the
    first-order importance of each head (Michel et al. 2019's head_mask, for any family: transformers
    dropped ``head_mask`` and DeBERTa never had it). Zeroing a gate equals removing that head.
    """
    import torch

    blocks = family.block_list(model)
    n_heads = family.attention_of(blocks[0]).heads
    gates = torch.ones(len(blocks), n_heads, requires_grad=True)
    handles = []
    for i, block in enumerate(blocks):
        attn = family.attention_of(block)

        def scale(module, inputs, i=i, head_size=attn.head_size, heads=attn.heads):
            x = inputs[0]
            shaped = x.view(*x.shape[:-1], heads, head_size) * gates[i].view(heads, 1).to(x.dtype)
            return (shaped.view(x.shape), *inputs[1:])

        handles.append(attn.o.register_forward_pre_hook(scale))
    return gates, lambda: [h.remove() for h in handles]


def ffn_activations(model, family: Family, on_gradient):
    """Call ``on_gradient(block_index, activation, gradient)`` for every FFN activation in backward.

    The activation is the down projection's input (the FFN neurons after their non-linearity). For
    ALBERT the shared block fires once per depth, so the scores add up over depths.
    """
    handles = []
    for i, block in enumerate(family.block_list(model)):
        def capture(module, inputs, i=i):
            x = inputs[0]
            if x.requires_grad:
                x.register_hook(lambda grad, x=x, i=i: on_gradient(i, x.detach(), grad))

        handles.append(family.ffn_of(block).down.register_forward_pre_hook(capture))
    return lambda: [h.remove() for h in handles]


def _slice_linear(linear, rows=None, cols=None):
    import torch

    weight = linear.weight
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = linear.bias
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias[rows] if rows is not None else bias)
    return new


def _set(obj, path: str, value) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module_at(obj, parent) if parent else obj, name, value)


def keep_heads(model, family: Family, kept: dict[int, list[int]]) -> None:
    """Physically keep only heads ``kept[i]`` of block i: slice q/k/v rows, output-projection columns."""
    import torch

    family.check_structure(model.config)
    blocks = family.block_list(model)
    for i, heads in kept.items():
        block = blocks[int(i)]
        attn = family.attention_of(block)
        d = attn.head_size
        index = torch.tensor([h * d + j for h in sorted(heads) for j in range(d)], dtype=torch.long)
        for path in (family.q, family.k, family.v, *family.extra_head_projections):
            try:
                linear = module_at(block, path)
            except AttributeError:  # optional projections (DeBERTa's pos_key_proj without share_att_key)
                continue
            _set(block, path, _slice_linear(linear, rows=index))
        _set(block, family.o, _slice_linear(attn.o, cols=index))
        setattr(attn.module, family.heads_attr, len(heads))
        setattr(attn.module, family.width_attr, len(heads) * d)
    if family.shared_head_table:
        _keep_table_heads(model, family, kept)


def _keep_table_heads(model, family: Family, kept: dict[int, list[int]]) -> None:
    """A per-head table shared by every layer (MPNet's relative bias): one column per head, same cut everywhere."""
    import torch

    cuts = {tuple(sorted(heads)) for heads in kept.values()}
    if len(cuts) != 1 or len(kept) != len(family.block_list(model)):
        raise EdgeshrinkError(f"{family.label}: every layer must keep the same heads (one relative-position bias "
                              f"table serves all layers); got {sorted(cuts)}")
    heads = list(next(iter(cuts)))
    table = module_at(model.base_model, family.shared_head_table)
    new = torch.nn.Embedding(table.num_embeddings, len(heads))
    with torch.no_grad():
        new.weight.copy_(table.weight[:, heads])
    _set(model.base_model, family.shared_head_table, new)


def keep_ffn(model, family: Family, block_index: int, neurons) -> None:
    """Keep only FFN neurons ``neurons`` of a block: rows of the up (and gate) projection, columns of the down one."""
    import torch

    family.check_structure(model.config)
    block = family.block_list(model)[block_index]
    keep = torch.as_tensor(sorted(int(k) for k in neurons))
    ffn = family.ffn_of(block)
    _set(block, family.ffn_up, _slice_linear(ffn.up, rows=keep))
    if family.ffn_gate:
        _set(block, family.ffn_gate, _slice_linear(module_at(block, family.ffn_gate), rows=keep))
    _set(block, family.ffn_down, _slice_linear(ffn.down, cols=keep))


def keep_kv_groups(model, family: Family, block_index: int, groups, heads: int, kv_heads: int, head_dim: int) -> None:
    """Keep only key/value groups ``groups`` of a grouped-query attention block: the k/v rows of each kept group,
    the q rows of the query heads that read it, and the matching columns of the output projection."""
    import torch

    block = family.block_list(model)[block_index]
    per_group = heads // kv_heads
    groups = sorted(int(g) for g in groups)
    q_heads = [g * per_group + j for g in groups for j in range(per_group)]
    rows = lambda hs: torch.tensor([h * head_dim + j for h in hs for j in range(head_dim)])  # noqa: E731
    _set(block, family.q, _slice_linear(module_at(block, family.q), rows=rows(q_heads)))
    for path in (family.k, family.v):
        _set(block, path, _slice_linear(module_at(block, path), rows=rows(groups)))
    _set(block, family.o, _slice_linear(module_at(block, family.o), cols=rows(q_heads)))


def keep_blocks(model, family: Family, keep: list[int]) -> None:
    import torch

    family.check("drop_layers")
    family.check_structure(model.config)
    blocks = family.block_list(model)
    _set(family.base_of(model), family.blocks, torch.nn.ModuleList([blocks[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)


