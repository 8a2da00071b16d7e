"""Keyword launches: every dlkern Triton launch names each argument after the kernel parameter it
fills (``kernel[grid](x=x, C_OUT=c_out, ...)``), so a launch reads against the kernel signature and
a misplaced argument is an error instead of a silently wrong value. ``named`` spreads a tuple (a
tensor's shape or strides, a stride/padding triple) over several parameters by name."""


def named(names, values):
    """``{name: value}`` pairing the space-separated parameter ``names`` with ``values`` in order;
    raises ValueError when the counts differ."""
    names = names.split()
    values = tuple(values)
    if len(names) != len(values):
        raise ValueError(f"named: {len(names)} names {names} for {len(values)} values")
    return dict(zip(names, values))
