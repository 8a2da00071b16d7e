"""Compile dlkern's Triton kernels for an H100 (sm_90) on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what a kernel computes, but it accepts code that the
real compiler rejects. Triton's compiler needs no driver to lower a kernel to PTX and a cubin, so the
tests also compile every kernel, with every autotune configuration, for the GPU the benchmarks target.
Import this module only in a process where TRITON_INTERPRET is unset (``triton.jit`` then builds
compilable ``JITFunction`` objects instead of interpreted ones).

``compile_for_h100(kernel, args, **constexprs)``: ``kernel`` is a ``@triton.jit`` function or an
autotuned one; ``args`` are example values of its runtime arguments in order (tensors give the
pointer type from their dtype, Python ints and floats give i32/i64 and fp32); constexpr values come
from ``constexprs``, the autotune configuration, or the parameter's default. Returns the compiled
kernels, one per configuration; raises whatever the compiler raises.

Like Triton's launcher at run time, the compile assumes 16-byte aligned pointers and marks an
integer that is a multiple of 16 as such (unless the parameter is in ``do_not_specialize``), so the
kernels are compiled as they will be for typical shapes: with vectorised, asynchronous
(``cp.async``) loads and their pipelining buffers in shared memory.
"""
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

H100 = GPUTarget("cuda", 90, 32)
# Shared memory per block on an H100 (227 KiB usable).
H100_SHARED_BYTES = 227 * 1024

_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
            torch.float64: "*fp64", torch.int32: "*i32", torch.int64: "*i64", torch.int8: "*i8",
            torch.uint8: "*u8", torch.bool: "*i1"}


def _scalar_type(value):
    if isinstance(value, torch.Tensor):
        return _POINTER[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    if value is None:
        return "constexpr"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def compile_for_h100(kernel, args, **constexprs):
    if isinstance(kernel, triton.runtime.autotuner.Autotuner):
        configs = kernel.configs
        fn = kernel.fn
    else:
        configs = [triton.Config({})]
        fn = kernel
    compiled = []
    for config in configs:
        values = dict(constexprs)
        values.update(config.kwargs)
        signature, const, attrs = {}, {}, {}
        runtime = iter(args)
        for index, param in enumerate(fn.params):
            name = param.name
            if param.is_constexpr:
                if name in values:
                    const[name] = values[name]
                elif param.has_default:
                    const[name] = param.default
                else:
                    raise TypeError(f"{fn.__name__}: no value for constexpr {name}")
                signature[name] = "constexpr"
            else:
                value = next(runtime)
                signature[name] = _scalar_type(value)
                if value is None:
                    const[name] = None
                aligned = (isinstance(value, torch.Tensor) and not param.do_not_specialize_on_alignment
                           or type(value) is int and value % 16 == 0 and not param.do_not_specialize)
                if aligned:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        src = ASTSource(fn=fn, signature=signature,
                        constexprs={(fn.arg_names.index(k),): v for k, v in const.items()},
                        attrs=attrs)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        compiled.append(triton.compile(src, target=H100, options=options))
    return compiled
