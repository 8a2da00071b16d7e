"""What the benchmark measures: layer tables of real networks, one module per op family, and whole
models.

* ``table.py``: the row format (``Row``: a network's layer shape as data) and ``Case`` (a timed
  benchmark: tensors, torch's call, dlkern's call, FLOPs, bytes).
* ``conv.py``, ``depthwise.py``, ``separable.py``, ``conv_transpose.py``, ``rnn.py``,
  ``attention.py``: the tables, each with ``FAMILY``, ``ROWS`` and ``QUICK`` (the row names of
  ``--suite quick``). They import nothing but ``table.py``: tests and benchmarks anywhere can read
  them (``from dlkern.suites.conv import ROWS``).
* ``cases.py``: ``case(row)`` builds the Case of a row.
* ``models.py``: whole models written with torch.nn; ``model_cases.py``: their benchmark Cases.

``rows(families, quick)`` lists the rows of the given families (all by default).
"""
import importlib

FAMILIES = ("conv", "depthwise", "separable", "conv_transpose", "rnn", "attention")


def module_of(family):
    """The table module of one family (``dlkern.suites.<family>``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; the families are {', '.join(FAMILIES)}")
    return importlib.import_module(f"dlkern.suites.{family}")


def rows(families=None, quick=False):
    """The rows of ``families`` (all by default) in table order; ``quick``: only each table's
    QUICK rows."""
    found = []
    for family in families or FAMILIES:
        module = module_of(family)
        found += [r for r in module.ROWS if not quick or r.name in module.QUICK]
    return found
