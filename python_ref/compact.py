import torch


def compact(x, index, dim=1):
    """out[b, ..., j, ...] = x[b, ..., index[b, j], ...] along `dim`; zeros where index == -1."""
    dim = dim % x.dim()
    shape = [1] * x.dim()
    shape[0], shape[dim] = index.shape
    full = list(x.shape)
    full[dim] = index.shape[1]
    if x.shape[dim] == 0:  # nothing to gather from: every entry is -1 (the op checks that)
        return x.new_zeros(full)
    idx = index.clamp(min=0).view(shape).expand(full)
    hole = (index < 0).view(shape).expand(full)
    out = torch.gather(x, dim, idx)
    return out.masked_fill(hole, 0)


def compact_varlen(x, index):
    """Each row's entries of index that are >= 0, in order, packed: (packed [T, ...], cu_seqlens [B+1] int32,
    max_seqlen)."""
    rows = [x[b, index[b][index[b] >= 0]] for b in range(x.shape[0])]
    counts = torch.tensor([len(r) for r in rows], dtype=torch.int32)
    cu_seqlens = torch.zeros(x.shape[0] + 1, dtype=torch.int32)
    cu_seqlens[1:] = counts.cumsum(0)
    packed = torch.cat(rows) if rows else x.new_empty((0, *x.shape[2:]))
    return packed, cu_seqlens.to(x.device), int(counts.max()) if len(rows) else 0
