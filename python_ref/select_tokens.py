import torch


def _per_row(value, B, device):
    return torch.as_tensor(value, dtype=torch.int64).to(device).expand(B)


def protected_mask(valid, num_sink, num_local):
    """[B, N] bool: the first num_sink and the last num_local[b] valid positions of each row."""
    B = valid.shape[0]
    rank = valid.long().cumsum(1) - 1  # rank of each position among its row's valid ones
    L = valid.long().sum(1, keepdim=True)
    local = _per_row(num_local, B, valid.device).unsqueeze(1)
    return valid & ((rank < num_sink) | (rank >= L - local))


def select_tokens(scores, keep, valid=None, num_sink=4, num_local=0, width=None):
    """Reference of sdtp.select_tokens (docs/ARCHITECTURE.md §3.2): protected tokens always kept, the rest ranked by
    score descending (ties: lower position first; NaN last), kept positions ascending and right-aligned with -1
    padding."""
    B, N = scores.shape
    device = scores.device
    valid = torch.ones(B, N, dtype=torch.bool, device=device) if valid is None else valid.bool()
    protected = protected_mask(valid, num_sink, num_local)
    L = valid.sum(1)
    counts = torch.maximum(torch.minimum(_per_row(keep, B, device), L), protected.sum(1))

    # One ordering of every position: protected, then ranked by score, then NaN, then padding. Stable sorts keep
    # position order inside each group, which breaks score ties towards the lower position.
    s = scores.float()
    nan = s.isnan()
    group = torch.full_like(s, 3, dtype=torch.int64)
    group[valid & nan] = 2
    group[valid & ~nan] = 1
    group[protected] = 0
    # Ranked by an integer key of the float's bits, which orders as the floats do with -0.0 == +0.0: float compares
    # would fold subnormal scores into zero under torch.set_flush_denormal(True).
    bits = s.view(torch.int32).long()
    magnitude = bits & 0x7FFFFFFF
    key = torch.where(bits < 0, -magnitude, magnitude)
    by_score = torch.where(group == 1, key, torch.zeros_like(key))
    order = torch.sort(by_score, dim=1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort(group.gather(1, order), dim=1, stable=True).indices)
    in_top = torch.arange(N, device=device).unsqueeze(0) < counts.unsqueeze(1)
    kept = torch.zeros(B, N, dtype=torch.bool, device=device).scatter(1, order, in_top)

    K = int(counts.max()) if B > 0 else 0
    if width is not None:
        if width < K:
            raise ValueError(f"width = {width} is smaller than the largest kept count {K}")
        K = width
    # Right-align: the i-th kept position of row b goes to column K - counts[b] + i.
    slot = (K - counts).unsqueeze(1) + kept.long().cumsum(1) - 1
    index = torch.full((B, K + 1), -1, dtype=torch.int64, device=device)
    positions = torch.arange(N, device=device).expand(B, N)
    index.scatter_(1, torch.where(kept, slot, K), torch.where(kept, positions, -1))
    return index[:, :K], counts
