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


def apply_hft_plan(model, step=0, strict=True):
    """Freeze and unfreeze `model`'s parameters as the plan says (for a LISA schedule, as it
    says at optimizer step `step`). Returns the names of the parameters that train in part."""
    entries = _entries(step)
    partial = []
    for pname, p in model.named_parameters():
        if _is_adapter(pname):
            continue
        name = _resolve(_checkpoint_name(pname), entries)
        if name is None:
            if strict:
                raise KeyError(f"parameter {pname} is not in the plan (a plan for another model?)")
            continue
        entry = entries[name]
        old = getattr(p, "_hft_hook", None)
        if old is not None:
            old.remove()
            p._hft_hook = None
        if entry == "train" or entry == "freeze":
            p.requires_grad_(entry == "train")
            continue
        keep = hft_trainable_mask(name, tuple(p.shape), entry, device=p.device)
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
