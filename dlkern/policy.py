"""Which kernel runs a call: the family names ``patch`` and ``enable`` select by, and the policy.

Selection. ``include`` / ``exclude`` (``ops`` / ``exclude`` for enable) name op families or torch
module classes. Each covered call carries tags: its family (one of ``FAMILIES``; a convolution
whose groups equal its input channels is "depthwise", not "conv") and the torch classes it stands
for. A call is taken when no include list is given or one of its tags is in it, and none of its
tags is excluded. An unknown name raises ValueError listing the valid ones.

Policies. ``"always"`` runs dlkern's kernel on every covered call (dlkern.functional, dlkern.nn).
``"fastest"`` (the default of patch and enable; ``DLKERN_POLICY`` overrides any default) times
dlkern against torch the first time a call signature is seen, and keeps the faster:

* signature: the op (module class and configuration, or aten operator), every tensor argument's
  shape, strides, dtype and device, the other arguments, grad mode, training mode, torch's thread
  count, and the machine (the cache file is per machine: ``kernels.machine.fingerprint()`` and the
  GPU's name);
* timing: both paths run on detached copies of the arguments (the caller's tensors, gradients,
  hooks and RNG state are untouched), forward only, or forward and backward (``autograd.grad``
  against the copies and the parameters, never accumulating into ``.grad``) when grad mode is on
  and something requires a gradient. Each path is warmed, then both are timed in alternating
  rounds and the fastest samples compared (see ``measure``): about a dozen calls of each path,
  once per signature and machine;
* cache: decisions go to ``$DLKERN_CACHE_DIR`` (default ``~/.cache/dlkern``), one JSON file per
  machine, written atomically (temporary file, ``os.replace``) under a file lock that merges with
  what other processes wrote; a file from another dlkern or torch version is ignored and replaced;
* under ``torch.compile``, a decision made (or read from disk) before tracing applies to the trace;
  a signature first seen while tracing runs dlkern's kernel (nothing can be timed on fake tensors).

Decisions and the calls they route are counted in ``dlkern.stats()["policy"]``. The clock is
``policy.clock`` (tests replace it).
"""
import ast
import contextlib
import functools
import hashlib
import json
import os
import tempfile
import threading
import time
import weakref

import torch

from dlkern import _dispatch

FAMILIES = ("conv", "conv_transpose", "depthwise", "separable", "rnn", "cell", "attention",
            "softmax", "mha")
POLICIES = ("always", "fastest")
DEFAULT = "fastest"  # of patch() and enable(); see README ("Which kernel runs")
FORMAT = 1

clock = time.perf_counter


# ---------------------------------------------------------------------------------------------
# selection and policy names

def _as_list(names):
    if names is None:
        return None
    if isinstance(names, (str, type)):
        return [names]
    return list(names)


class Selection:
    """Which covered calls an entry point takes, from its include and exclude lists.
    ``classes`` are the module classes the entry point accepts as names."""

    def __init__(self, include, exclude, classes, where, include_name="include"):
        self.include = self._check(_as_list(include), classes, where, include_name)
        self.exclude = self._check(_as_list(exclude), classes, where, "exclude") or set()

    @staticmethod
    def _check(names, classes, where, argument):
        if names is None:
            return None
        bad = [n for n in names if not (n in FAMILIES or (isinstance(n, type) and n in classes))]
        if bad:
            raise ValueError(
                f"{where}: unknown {argument} name(s) {bad!r}; valid: the op families "
                f"{', '.join(repr(f) for f in FAMILIES)} or the module classes "
                f"{', '.join(sorted('torch.nn.' + c.__name__ for c in classes))}")
        return set(names)

    def takes(self, tags):
        if self.include is not None and not self.include.intersection(tags):
            return False
        return not self.exclude.intersection(tags)


def resolve(policy, default=DEFAULT):
    """The policy in force: the argument, else ``DLKERN_POLICY``, else the entry point's default."""
    if policy is None:
        policy = os.environ.get("DLKERN_POLICY", "").strip().lower() or default
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
    return policy


# ---------------------------------------------------------------------------------------------
# call signatures

def _plain(t):
    """A tensor the policy may time: dense, strided, not a subclass or a torch.func wrapper."""
    return (type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided
            and not torch._C._functorch.is_functorch_wrapped_tensor(t))


def signature(obj):
    """A hashable, literal description of a call's arguments (written with repr to the cache)."""
    if isinstance(obj, torch.Tensor):
        return ("T", tuple(obj.shape), tuple(obj.stride()), str(obj.dtype), obj.device.type,
                obj.requires_grad)
    if isinstance(obj, torch.nn.utils.rnn.PackedSequence):
        # lengths change from batch to batch: the batch, the steps and the rows decide the cost
        data, sizes = obj.data, obj.batch_sizes
        return ("P", tuple(data.shape[1:]), str(data.dtype), data.device.type,
                data.requires_grad, int(sizes[0]) if sizes.numel() else 0, sizes.numel())
    if isinstance(obj, (tuple, list)):
        return tuple(signature(x) for x in obj)
    if isinstance(obj, dict):
        return tuple((k, signature(v)) for k, v in sorted(obj.items()))
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return type(obj).__name__


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in tensors_in(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in tensors_in(x)]
    return []


def _detached(obj):
    """``obj`` with every tensor replaced by a detached alias keeping its requires_grad."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().requires_grad_(obj.requires_grad and obj.is_floating_point())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple, PackedSequence
        return type(obj)(*(_detached(x) for x in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detached(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    return obj


def wants_backward(tensors):
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def timed_call(fn, args, kwargs, extra_leaves=(), backward=False):
    """A zero-argument callable running ``fn(*args, **kwargs)`` on detached copies of the
    arguments, and, with ``backward``, the gradients of the outputs with respect to those copies
    and ``extra_leaves`` (parameters) through ``autograd.grad``, which accumulates nothing."""
    args, kwargs = _detached(args), _detached(kwargs)
    leaves = [t for t in tensors_in((args, kwargs)) if t.requires_grad]
    leaves += [t for t in extra_leaves if t.requires_grad]
    grads = {}

    def call():
        out = fn(*args, **kwargs)
        if backward and leaves:
            outs = [t for t in tensors_in(out) if t.requires_grad]
            if outs:
                if "out" not in grads:
                    grads["out"] = [torch.ones_like(t) for t in outs]
                torch.autograd.grad(outs, leaves, grads["out"], allow_unused=True)
        return out
    return call


# ---------------------------------------------------------------------------------------------
# timing

def _synchronize(devices):
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _time_once(call, devices):
    _synchronize(devices)
    start = clock()
    call()
    _synchronize(devices)
    return clock() - start


def measure(run_torch, run_dlkern, devices=(), rounds=4, min_sample=1e-3, max_inner=16,
            settle_below=0.02):
    """(torch seconds, dlkern seconds) per call. Each path is warmed (dlkern first: its first call
    may load compiled code) and timed once for an estimate; then ``rounds`` alternating samples
    each, the minimum kept (noise from other processes only ever adds time). A sample of a call
    shorter than ``min_sample`` repeats it (the same count for both), and a sample of a call
    shorter than ``settle_below`` follows one untimed call of the same path, so the other
    library's worker threads, still spinning after its turn, do not land on this one's clock."""
    run_dlkern()
    run_torch()
    estimate = min(_time_once(run_dlkern, devices), _time_once(run_torch, devices))
    inner = max(1, min(max_inner, int(min_sample / max(estimate, 1e-9))))
    settle = estimate < settle_below
    best = {"torch": float("inf"), "dlkern": float("inf")}
    for _ in range(rounds):
        for name, call in (("torch", run_torch), ("dlkern", run_dlkern)):
            if settle:
                call()

            def repeated():
                for _ in range(inner):
                    call()
            best[name] = min(best[name], _time_once(repeated, devices) / inner)
    return best["torch"], best["dlkern"]


# ---------------------------------------------------------------------------------------------
# decisions: in memory per thread count, on disk per machine

_lock = threading.RLock()      # guards the tables; held while timing (one signature at a time)
_tables = {}                   # torch thread count -> {key: "dlkern" | "torch"}
_current = {}                  # the table of the thread count last seen (read while tracing)
_details = {}                  # (threads, key) -> {"choice", "torch_s", "dlkern_s"}
_loaded_from = None            # the cache file read into the tables, if any
_recording = threading.local()  # .calls: a list while dlkern.explain records a run


@functools.lru_cache(maxsize=None)
def _machine():
    from dlkern.kernels import machine
    name = machine.fingerprint()
    if torch.cuda.is_available():
        name += "|" + ",".join(torch.cuda.get_device_name(i)
                               for i in range(torch.cuda.device_count()))
    return name


def _versions():
    import dlkern
    return {"dlkern": dlkern.__version__, "torch": torch.__version__}


def cache_path():
    """This machine's decision file, under $DLKERN_CACHE_DIR (default ~/.cache/dlkern)."""
    return _cache_path(os.environ.get("DLKERN_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME"))


@functools.lru_cache(maxsize=8)
def _cache_path(cache_dir, xdg_cache):
    root = cache_dir or os.path.join(
        xdg_cache or os.path.join(os.path.expanduser("~"), ".cache"), "dlkern")
    digest = hashlib.sha1(_machine().encode()).hexdigest()[:16]
    return os.path.join(root, f"policy-{digest}.json")


def _read(path):
    """The decisions in ``path`` ({"threads|key": entry}), or {} when absent, unreadable or
    written by another dlkern or torch version."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if (not isinstance(data, dict) or data.get("format") != FORMAT
            or data.get("versions") != _versions()):
        return {}
    return data.get("decisions", {})


@contextlib.contextmanager
def _file_lock(path):
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): the atomic replace alone keeps the file whole
        yield
        return
    with open(path + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(path, new):
    """Merge ``new`` decisions into the file at ``path``, atomically, under its lock."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _file_lock(path):
        decisions = _read(path)
        decisions.update(new)
        data = {"format": FORMAT, "versions": _versions(), "machine": _machine(),
                "decisions": decisions}
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".policy-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def _disk_key(threads, key):
    return f"{threads}|{key!r}"


def load():
    """Read this machine's cache file into memory (once per file; patch and enable call it so
    that decisions exist before torch.compile traces). Returns the number of decisions read."""
    global _loaded_from
    path = cache_path()
    with _lock:
        if _loaded_from == path:
            return 0
        _loaded_from = path
        count = 0
        for text, entry in _read(path).items():
            threads, _, key = text.partition("|")
            try:
                key = ast.literal_eval(key)
                threads = int(threads)
            except (ValueError, SyntaxError):
                continue
            if entry.get("choice") in ("dlkern", "torch"):
                _tables.setdefault(threads, {}).setdefault(key, entry["choice"])
                _details.setdefault((threads, key), dict(entry, source="disk"))
                count += 1
        _table()  # what a trace reads, before any eager call
        return count


def forget():
    """Drop every decision held in memory (the disk cache stays); the next lookup reads it anew."""
    global _loaded_from
    with _lock:
        _tables.clear()
        _current.clear()
        _details.clear()
        _loaded_from = None


def _table():
    global _current
    table = _tables.setdefault(torch.get_num_threads(), {})
    if table is not _current:
        _current = table
    return table


def details(key):
    """What the policy knows of ``key`` at this thread count: {"choice", "torch_s", "dlkern_s",
    "source"} (source: "timed" or "disk"), or None."""
    with _lock:
        return _details.get((torch.get_num_threads(), key))


def trace_choice(key):
    """The decision for ``key`` while torch.compile traces: the one made before, else dlkern.
    (Plain dict reads only: dynamo inlines this and bakes the answer into the graph.)"""
    return _current.get(key, "dlkern")


def _measurable():
    """Timing is possible: no dispatch mode (FakeTensorMode, FlopCounterMode, a recorder) is
    active, under which the calls would not be the real work."""
    return not torch._C._len_torch_dispatch_stack()


def choose(family, key, make_torch, make_dlkern, tensors):
    """The path for this call under the "fastest" policy: "dlkern" or "torch". ``make_*`` build
    the zero-argument timed callables (only when a timing is needed); ``tensors`` are the call's
    tensors and parameters, whose devices are synchronised around the clock."""
    table = _tables.get(torch.get_num_threads())
    choice = table.get(key) if table is not None else None
    if choice is not None:  # the common case: no lock, no file
        _dispatch.count_policy(family, choice)
        return choice
    load()
    with _lock:
        table = _table()
        choice = table.get(key)
        if choice is None and (not _measurable() or not all(_plain(t) for t in tensors)):
            choice = "dlkern"  # nothing honest to time; not remembered
        elif choice is None:
            devices = {t.device for t in tensors}
            cuda = [d.index for d in devices if d.type == "cuda"]
            recorded, _recording.calls = getattr(_recording, "calls", None), None
            try:  # dropout inside the timing draws nothing; its calls are not recorded
                with torch.random.fork_rng(devices=cuda):
                    t_torch, t_dlkern = measure(make_torch(), make_dlkern(), devices)
            finally:
                _recording.calls = recorded
            choice = "dlkern" if t_dlkern < t_torch else "torch"
            table[key] = choice
            entry = {"choice": choice, "torch_s": t_torch, "dlkern_s": t_dlkern}
            threads = torch.get_num_threads()
            _details[(threads, key)] = dict(entry, source="timed")
            _dispatch.count_policy(family, "timed")
            try:
                _write(cache_path(), {_disk_key(threads, key): entry})
            except OSError:
                pass  # a read-only home: the decision still holds for this process
    _dispatch.count_policy(family, choice)
    return choice


# ---------------------------------------------------------------------------------------------
# modules: the measured twin classes that patch() installs

_measured_classes = {}
_views = weakref.WeakKeyDictionary()


def torch_view(module, torch_cls):
    """An instance of ``torch_cls`` sharing ``module``'s ``__dict__`` (parameters, buffers,
    submodules, settings): torch's own methods run on the module's very state. Calling the
    torch class's forward on the module itself would not do: it calls methods the twin overrides
    (Conv2d.forward calls self._conv_forward)."""
    view = _views.get(module)
    if view is None or view.__dict__ is not module.__dict__ or type(view) is not torch_cls:
        view = torch_cls.__new__(torch_cls)
        view.__dict__ = module.__dict__
        _views[module] = view
    return view


@contextlib.contextmanager
def recording():
    """Collect, in the yielded list, every call of a measured module on this thread:
    dicts with module, family, key, choice, args, kwargs, params, backward, and the two forwards."""
    calls = []
    outer = getattr(_recording, "calls", None)
    _recording.calls = calls
    try:
        yield calls
    finally:
        _recording.calls = outer


def module_params(module):
    if module._modules:
        return list(module.parameters())
    return [p for p in module._parameters.values() if p is not None]


def call_key(module, args, kwargs, params):
    """(key, backward) of one call of a patched module under the "fastest" policy."""
    backward = torch.is_grad_enabled() and (any(p.requires_grad for p in params)
                                            or any(t.requires_grad for t in tensors_in(args))
                                            or any(t.requires_grad for t in tensors_in(kwargs)))
    return (module._dlkern_policy_key, signature(args), signature(kwargs) if kwargs else (),
            backward, module.training), backward


def measured_class(dlkern_cls, torch_cls, family):
    """A subclass of the dlkern twin ``dlkern_cls`` whose forward runs the twin's or
    ``torch_cls``'s forward, as the "fastest" policy decides per call signature. The module must
    carry ``_dlkern_policy_key`` (see ``module_key``), set by patch."""
    cached = _measured_classes.get(dlkern_cls)
    if cached is not None:
        return cached
    dlkern_forward = dlkern_cls.forward
    container = not dlkern_cls.__module__.startswith("dlkern.nn")

    def torch_forward(self, *args, **kwargs):
        return torch_cls.forward(torch_view(self, torch_cls), *args, **kwargs)

    def forward(self, *args, **kwargs):
        params = module_params(self)
        key, backward = call_key(self, args, kwargs, params)
        if container and (backward or self.training):
            # torch's own forward differs from the standard path only by its inference fast
            # path, which needs eval mode and no gradient: nothing to choose
            return dlkern_forward(self, *args, **kwargs)
        if torch.compiler.is_compiling():
            choice = trace_choice(key)
        else:
            choice = choose(
                family, key,
                lambda: timed_call(lambda *a, **k: torch_forward(self, *a, **k), args, kwargs,
                                   params, backward),
                lambda: timed_call(lambda *a, **k: dlkern_forward(self, *a, **k), args, kwargs,
                                   params, backward),
                tensors_in((args, kwargs)) + params)
            calls = getattr(_recording, "calls", None)
            if calls is not None:
                calls.append(dict(module=self, family=family, key=key, choice=choice, args=args,
                                  kwargs=kwargs, params=params, backward=backward,
                                  container=container, torch_forward=torch_forward,
                                  dlkern_forward=dlkern_forward))
        if choice == "torch":
            return torch_forward(self, *args, **kwargs)
        return dlkern_forward(self, *args, **kwargs)

    name = f"Measured{dlkern_cls.__name__.lstrip('_')}"
    cls = type(name, (dlkern_cls,), {
        "forward": forward, "__module__": __name__, "__qualname__": name,
        "__doc__": f"{dlkern_cls.__name__} whose calls run torch's forward where it is faster."})
    globals()[name] = cls  # importable by name, so a patched model still pickles
    _measured_classes[dlkern_cls] = cls
    return cls


def module_key(module, family):
    """The static part of a module's call signature: its class, family and configuration."""
    params = tuple((name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters())
    config = tuple((name, repr(getattr(module, name))) for name in (
        "batch_first", "num_heads", "dropout", "bidirectional", "proj_size", "norm_first",
        "padding_mode", "kernel_size", "stride", "padding", "dilation", "groups",
        "output_padding") if hasattr(module, name))
    return (family, _torch_name(module), params, config)


def _torch_name(module):
    """The name of the torch class a (patched) module stands for."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn"):
            return cls.__name__
    return type(module).__name__
