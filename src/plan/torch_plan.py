_M64 = (1 << 64) - 1
_C = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_C_SIGNED = tuple(c - (1 << 64) for c in _C)  # the same bits as torch.int64 scalars


def _wrap(v):
    return v & _M64


def _same(v):
    return v  # torch.int64 arithmetic wraps by itself


def _srl(x, s):
    # Logical right shift, also for two's-complement int64 tensors.
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(x, c=_C, wrap=_wrap):
    z = wrap(x + c[0])
    z = wrap((z ^ _srl(z, 30)) * c[1])
    z = wrap((z ^ _srl(z, 27)) * c[2])
    return z ^ _srl(z, 31)


def _fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h


def hft_key(seed, name):
    """rng::key: splitmix64(seed ^ fnv1a64(name))."""
    return _splitmix64((seed & _M64) ^ _fnv1a64(name))


def _half(n):
    bits = (max(n, 4) - 1).bit_length()
    bits = (bits + 1) // 2 * 2
    half = bits // 2
    return half, (1 << half) - 1


def _feistel(x, key, half, mask, c, wrap):
    l, r = x >> half, x & mask
    for rnd in range(4):
        f = _splitmix64(key ^ (rnd << 56) ^ r, c, wrap) & mask
        l, r = r, l ^ f
    return (l << half) | r


def hft_permute(key, n, i):
    """rng::permute: a keyed bijection of range(n), evaluated at i (4-round Feistel network
    with cycle walking). Element i of a mask trains iff hft_permute(key, n, i) < count."""
    half, mask = _half(n)
    x = i
    while True:
        x = _feistel(x, key, half, mask, _C, _wrap)
        if x < n:
            return x


def hft_mask_count(ratio, numel):
    """round(ratio * numel), halves away from zero, as hft rounds."""
    x = min(max(ratio, 0.0), 1.0) * numel
    k = int(x)
    if x - k >= 0.5:
        k += 1
    return min(k, numel)


def _element_mask(name, numel, ratio, seed, device, chunk=1 << 22):
    import torch

    k = hft_mask_count(ratio, numel)
    if k >= numel or k == 0:
        return torch.full((numel,), k > 0, dtype=torch.bool, device=device)
    key = hft_key(seed, name)
    key = key - (1 << 64) if key >= (1 << 63) else key
    half, mask = _half(numel)
    out = torch.empty(numel, dtype=torch.bool, device=device)
    for start in range(0, numel, chunk):
        end = min(start + chunk, numel)
        x = torch.arange(start, end, dtype=torch.int64, device=device)
        x = _feistel(x, key, half, mask, _C_SIGNED, _same)
        while True:
            out_of_range = x >= numel
            if not bool(out_of_range.any()):
                break
            x[out_of_range] = _feistel(x[out_of_range], key, half, mask, _C_SIGNED, _same)
        out[start:end] = x < k
    return out


def hft_trainable_mask(name, shape, entry, device=None):
    """A bool tensor of `shape`: True where the plan entry trains."""
    import torch

    numel = 1
    for d in shape:
        numel *= d
    if entry == "train" or entry == "freeze":
        return torch.full(tuple(shape), entry == "train", dtype=torch.bool, device=device)
    if entry[0] == "mask":
        return _element_mask(name, numel, entry[1], entry[2], device).reshape(tuple(shape))
    _, axis, rows = entry
    keep = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    for a, b in rows:
        index = [slice(None)] * len(shape)
        index[axis] = slice(a, b)
        keep[tuple(index)] = True
    return keep


def _entries(step):
    if SCHEDULE is None:
        return PLAN
    period = step // SCHEDULE["interval"]
    if period >= len(SCHEDULE["periods"]):
        raise ValueError(
            f"step {step} is in period {period}, past the {len(SCHEDULE['periods'])} periods "
            "this plan lists; regenerate it with a larger --lisa-periods"
        )
    layers = set(SCHEDULE["periods"][period])
    entries = dict(PLAN)
    for name, layer in SCHEDULE["layer"].items():
        entries[name] = "train" if layer in layers else "freeze"
    return entries


# PEFT wraps the layers it adapts: `q_proj.weight` becomes `q_proj.base_layer.weight`, a module
# in `modules_to_save` becomes `original_module` plus `modules_to_save.<adapter>` copies, and the
# adapter's own parameters (`lora_A`, `lora_B`, ...) appear beside them. Those are PEFT's to
# train and are left alone; the wrapped weights are matched by their checkpoint names.
_PEFT_ADAPTER = ("lora_", "lokr_", "loha_", "ia3_", "oft_", "boft_", "vera_", "adaption_")


def _is_adapter(pname):
    return any(part.startswith(_PEFT_ADAPTER) for part in pname.split("."))


def _checkpoint_name(pname):
    parts = pname.split(".")
    out = []
    i = 0
    while i < len(parts):
        if parts[i] in ("base_layer", "original_module"):
            i += 1
        elif parts[i] == "modules_to_save":
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def _resolve(name, entries):
    parts = name.split(".")
    for i in range(len(parts)):
        cand = ".".join(parts[i:])
        if cand in entries:
            return cand
    return None


# transformers 5 holds a layer's routed experts in two fused parameters, `experts.gate_up_proj`
# `[E, 2I, H]` (each expert's gate rows, then its up rows) and `experts.down_proj` `[E, H, I]`,
# where checkpoints and plans name one tensor per expert and matrix (`mlp.experts.E.gate_proj`,
# Mixtral's `block_sparse_moe.experts.E.w1`). Such a parameter takes its pieces' entries.
_EXPERT_PARTS = {
    "gate_up_proj": (("gate_proj", "w1"), ("up_proj", "w3")),
    "down_proj": (("down_proj", "w2"),),
}


def _expert_pieces(name, shape, entries):
    """[(expert, first row, rows, plan name)] of a fused expert parameter, or None."""
    prefix, sep, last = name.rpartition(".experts.")
    if not sep or last not in _EXPERT_PARTS or len(shape) != 3:
        return None
    blocks = [prefix]
    if prefix.endswith(".mlp"):
        blocks.append(prefix[: -len("mlp")] + "block_sparse_moe")
    parts = _EXPERT_PARTS[last]
    rows = shape[1] // len(parts)
    pieces = []
    for e in range(shape[0]):
        for j, aliases in enumerate(parts):
            cands = (f"{b}.experts.{e}.{a}.weight" for b in blocks for a in aliases)
            found = next((r for r in (_resolve(c, entries) for c in cands) if r), None)
            if found is None:
                return None
            pieces.append((e, j * rows, rows, found))
    return pieces


def _keep(p, cname, name, entries):
    """The entry of parameter `p` (checkpoint name `cname`; plan name `name`, or None for fused
    experts): "train", "freeze", or a bool tensor of the elements that train; None when the
    plan has no entry."""
    import torch

    if name is not None:
        entry = entries[name]
        if entry == "train" or entry == "freeze":
            return entry
        return hft_trainable_mask(name, tuple(p.shape), entry, device=p.device)
    pieces = _expert_pieces(cname, tuple(p.shape), entries)
    if pieces is None:
        return None
    states = {entries[n] for *_, n in pieces}
    if states == {"train"} or states == {"freeze"}:
        return states.pop()
    keep = torch.zeros(tuple(p.shape), dtype=torch.bool, device=p.device)
    for e, first, rows, n in pieces:
        piece = (rows,) + tuple(p.shape[2:])
        keep[e, first : first + rows] = hft_trainable_mask(n, piece, entries[n], device=p.device)
    return keep


def apply_hft_plan(model, step=0, strict=True):
    """Freeze and unfreeze `model`'s parameters as the plan says (for a LISA schedule, as it
    says at optimizer step `step`). Returns the names of the parameters that train in part."""
    entries = _entries(step)
    partial = []
    for pname, p in model.named_parameters():
        if _is_adapter(pname):
            continue
        cname = _checkpoint_name(pname)
        # transformers 5 calls Mixtral's `block_sparse_moe` `mlp`.
        name = _resolve(cname, entries) or _resolve(
            cname.replace(".mlp.", ".block_sparse_moe."), entries
        )
        keep = _keep(p, cname, name, entries)
        if keep is None:
            if strict:
                raise KeyError(f"parameter {pname} is not in the plan (a plan for another model?)")
            continue
        old = getattr(p, "_hft_hook", None)
        if old is not None:
            old.remove()
            p._hft_hook = None
        if isinstance(keep, str):
            p.requires_grad_(keep == "train")
            continue
        p.requires_grad_(True)
        p._hft_hook = p.register_hook(lambda g, keep=keep: g * keep.to(g.dtype))
        partial.append(pname)
    return partial


def hft_param_groups(model, partial, weight_decay):
    """Optimizer parameter groups that keep masked elements exactly where they are under AdamW.

    The gradient hooks zero the frozen elements' gradients, so Adam's moments for them stay
    zero and the Adam update is exactly zero; decoupled weight decay would still shrink them.
    The parameters in `partial` (what apply_hft_plan returned) therefore get weight_decay=0:
    the cost is that their trainable elements are not decayed either. Everything else that
    trains gets `weight_decay`; frozen parameters are left out.

        partial = apply_hft_plan(model)
        opt = torch.optim.AdamW(hft_param_groups(model, partial, 0.1), lr=1e-5)
    """
    partial = set(partial)
    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if pname in partial else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
