"""The `sage_attention` torch.library operators.

    torch.ops.sage_attention.forward(q, k, v, ...) -> (out, lse)
    torch.ops.sage_attention.merge_state(out_a, lse_a, out_b, lse_b, layout) -> (out, lse)
    torch.ops.sage_attention.merge_state_inplace(out_a!, lse_a!, out_b, lse_b, layout) -> ()

Each has a CPU kernel (the library's exact emulation of the GPU numerics), a
CUDA kernel, a fake (meta) implementation for torch.compile / export, and an
autograd registration whose backward raises NotImplementedError, so training
code fails loudly rather than silently getting no gradient. The backward
raises when it runs, not when it is traced: its formula is an operator
(`forward_backward_unavailable`, `merge_backward_unavailable`) whose kernels
raise and whose fake gives the gradients' shapes, so torch.compile can trace
a model whose inputs require grad (eval() without no_grad()) and only an
actual .backward() fails.

`forward` sits on every attention call, so it is registered through the
low-level `torch.library.Library` API with a hand-written autograd kernel,
which dispatches several times faster than the `@torch.library.custom_op`
decorator (whose generic wrapper goes through pytree and an extra
autograd.Function on every call; scripts/host_overhead.py times a call's
pieces). The merge operators run
once per sequence-parallel step on large tensors, and one of them mutates its
inputs, so they use `custom_op`, which handles the version counters of
mutated tensors for us.

Outputs and the workspace are allocated through PyTorch (caching allocator,
CUDA-graph pools) and the C++ core runs on the current stream of the inputs'
device; the core sets that device itself, so a tensor on cuda:1 runs on cuda:1
whatever the current device is.
"""

from __future__ import annotations

import functools
import importlib.machinery
import math
import os
import struct
import warnings

import torch
from torch.autograd import forward_ad as _forward_ad

from . import _C

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}

# forward's arguments after (q, k, v): (name, schema type, default). The
# quantization defaults are the SageAttention2 recipe.
_FORWARD_OPTIONS = (
    ("tensor_layout", "str", "HND"),
    ("is_causal", "bool", False),
    ("sm_scale", "float?", None),
    ("return_lse", "bool", False),
    ("causal_align", "str", "top_left"),
    ("qk_format", "str", "int8"),
    ("qk_granularity", "str", "per_warp"),
    ("pv_format", "str", "fp8_e4m3"),
    ("pv_accum", "str", "two_level"),
    ("smooth_q", "bool", False),
    ("smooth_k", "bool", True),
    ("smooth_v", "bool", False),
)
_OPTION_DEFAULTS = tuple(default for _, _, default in _FORWARD_OPTIONS)
# The options sageattn takes as keywords only, in forward's order, and their schema types.
QUANT_DEFAULTS = {name: default for name, _, default in _FORWARD_OPTIONS[4:]}
QUANT_KINDS = {name: kind for name, kind, _ in _FORWARD_OPTIONS[4:]}
# Alternative spellings of quantization options (the SageAttention package's).
OPTION_ALIASES = {"qk_quant_gran": "qk_granularity"}
GRANULARITY_SPELLINGS = ("qk_granularity", *(alias for alias, name in OPTION_ALIASES.items()
                                             if name == "qk_granularity"))


def flag(name: str, value) -> bool:
    """A bool argument: True, False, 1 or 0 (as the operator's schema takes them); TypeError otherwise."""
    if value is True or value is False:
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {value!r}")


def option_value(name: str, value):
    """A quantization option checked against its schema type (TypeError naming it otherwise); the
    core checks the value itself."""
    if QUANT_KINDS[name] == "bool":
        return flag(name, value)
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {value!r}")
    return value


def _schema_literal(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


_FORWARD_SCHEMA = "forward(Tensor q, Tensor k, Tensor v, {}) -> (Tensor out, Tensor lse)".format(
    ", ".join(f"{kind} {name}={_schema_literal(default)}" for name, kind, default in _FORWARD_OPTIONS))

_LIB = torch.library.Library("sage_attention", "DEF")
_LIB.define(_FORWARD_SCHEMA)
forward = torch.ops.sage_attention.forward.default


# ----------------------------------------------------------------- helpers


def tensor_spec(t: torch.Tensor, name: str = "tensor"):
    """(pointer, dtype, shape, strides, device) of a tensor, as the core takes it."""
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        check_dtype(name, t)
    return (t.data_ptr(), dtype, t.shape, t.stride(), t.get_device())


def current_stream(t: torch.Tensor) -> int:
    """The raw current CUDA stream of t's device (0 for host tensors)."""
    return torch._C._cuda_getCurrentRawStream(t.get_device()) if t.is_cuda else 0


def check_same_device(**tensors):
    """ValueError unless every tensor is on the first one's device (the fake kernels' check: the
    core makes it for real tensors)."""
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{name}: on device {t.device}, but {first_name} is on {first.device} "
                             "(all tensors of a call must be on one device)")


def check_dense(**tensors):
    """TypeError / ValueError unless every argument is a dense (strided, not nested) tensor, naming it."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.is_nested or t.layout != torch.strided:
            kind = "a nested tensor" if t.is_nested else f"layout {t.layout}"
            raise ValueError(f"{name}: expected a dense (strided) tensor, got {kind}")


_LAYOUT_DOCS = {"HND": "[B, H, N, D]", "NHD": "[B, N, H, D]"}


def check_layout(tensor_layout):
    """TypeError / ValueError naming tensor_layout unless it is 'HND' or 'NHD' (a str subclass too)."""
    if not isinstance(tensor_layout, str):
        raise TypeError(f"tensor_layout: expected 'HND' or 'NHD', got {tensor_layout!r}")
    if tensor_layout not in _LAYOUT_DOCS:
        raise ValueError(f"tensor_layout: expected 'HND' or 'NHD', got {tensor_layout!r}")


def check_dtype(name: str, t: torch.Tensor):
    if t.dtype not in _DTYPE_NAMES:
        raise ValueError(f"{name}: unsupported dtype {t.dtype} (expected float16, bfloat16 or float32)")


# The kernels' largest head dim; the CPU emulation would take up to 256, but
# a call that passes in CPU tests must not fail on the GPU.
MAX_HEAD_DIM = 128


def check_head_dim(name: str, head_dim):
    if _surely(head_dim > MAX_HEAD_DIM):
        raise NotImplementedError(f"{name}: head dim {head_dim} is not supported (at most {MAX_HEAD_DIM})")


def _surely(condition) -> bool:
    """The condition where it is decided. The size checks here also run in the fake kernels, on
    symbolic sizes (torch.compile): one that cannot be decided there (a size known only at run time,
    e.g. from .item()) is False, so nothing is raised, and the core checks it when the call runs."""
    if isinstance(condition, bool):
        return condition
    # (Only symbolic sizes get here, while tracing has loaded the module: not imported up front, where
    # it would add ~0.3 s, sympy, to every import of the package.)
    try:
        from torch.fx.experimental.symbolic_shapes import guard_or_false
    except ImportError:  # an older torch: only what needs no guard (fewer checks at trace time, none wrong)
        from torch.fx.experimental.symbolic_shapes import statically_known_true as guard_or_false
    return guard_or_false(condition)


def _differ(shape_a, shape_b) -> bool:
    return len(shape_a) != len(shape_b) or any(_surely(a != b) for a, b in zip(shape_a, shape_b))


def _check_rows_contiguous(name: str, t: torch.Tensor):
    """The core reads rows as runs of memory (an empty tensor is never read)."""
    if _surely(t.numel() != 0) and _surely(t.shape[-1] > 1) and _surely(t.stride(-1) != 1):
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got stride {t.stride(-1)} "
                         f"(strides {tuple(t.stride())})")


def check_attention_tensors(q, k, v, tensor_layout: str):
    """The core's checks of q, k and v that need no data, in Python, for the calls that do not reach
    the core: the fake kernel (meta and fake tensors: torch.compile, export) and the empty problems
    (which the core rejects). The messages follow the core's (src/api/validate.cpp)."""
    check_dense(q=q, k=k, v=v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor {_LAYOUT_DOCS[tensor_layout]}, got shape {tuple(t.shape)}")
        check_dtype(name, t)
        _check_rows_contiguous(name, t)
    check_same_device(q=q, k=k, v=v)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v: dtypes {q.dtype}, {k.dtype}, {v.dtype} must be equal")
    if q.dtype == torch.float32 and q.device.type not in ("cpu", "meta"):
        raise ValueError("q: dtype float32 is only supported for host tensors (the GPU kernels take float16 or "
                         "bfloat16)")
    if _differ(k.shape, v.shape) or _differ((q.shape[0], q.shape[3]), (k.shape[0], k.shape[3])):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: k and v must have one shape, "
                         f"and q their batch and head dim ({tensor_layout} layout)")
    check_head_dim("q", q.shape[3])
    heads = 1 if tensor_layout == "HND" else 2
    heads_q, heads_kv = q.shape[heads], k.shape[heads]
    no_kv_heads = _surely(heads_kv == 0)
    if (no_kv_heads and _surely(heads_q != 0)) or (not no_kv_heads and _surely(heads_q % heads_kv != 0)):
        raise ValueError(f"q has {heads_q} heads, k and v {heads_kv}: q's must be a multiple of theirs")


def check_merge_tensors(out_a, lse_a, out_b, lse_b, tensor_layout: str):
    """The core's checks of merge_state's arguments that need no data (src/api/merge.cpp), for its fake
    kernels."""
    check_layout(tensor_layout)
    check_dense(out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    for name, t in (("out_a", out_a), ("out_b", out_b)):
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor {_LAYOUT_DOCS[tensor_layout]}, got shape {tuple(t.shape)}")
        _check_rows_contiguous(name, t)
    check_lse_dtypes(lse_a, lse_b)
    check_same_device(out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    check_dtype("out_a", out_a)
    if out_b.dtype != out_a.dtype:
        raise ValueError(f"out_b: dtype {out_b.dtype} must equal out_a's dtype {out_a.dtype}")
    if _differ(out_b.shape, out_a.shape):
        raise ValueError(f"out_b: shape {tuple(out_b.shape)} must equal out_a's shape {tuple(out_a.shape)} "
                         f"({_LAYOUT_DOCS[tensor_layout]})")
    expected = tuple(lse_shape(out_a, tensor_layout))
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        if _differ(t.shape, expected):
            raise ValueError(f"{name}: shape {tuple(t.shape)} must be [B, H, N] = {list(expected)} (the same in both "
                             "layouts)")


def check_lse_dtypes(*lses):
    """The LSE inputs of a merge are float32 (before tensor_spec, whose message would list the 16-bit types)."""
    for name, t in zip(("lse_a", "lse_b"), lses):
        if t.dtype != torch.float32:
            raise ValueError(f"{name}: dtype must be float32, got {t.dtype}")


def lse_shape(q: torch.Tensor, tensor_layout: str):
    """[B, Hq, Nq] of a q in `tensor_layout`, 'HND' or 'NHD' (_core_options checks it before any call
    gets here): the LSE is always head-major."""
    if q.dim() != 4:
        raise ValueError(f"q: expected a 4-D tensor [B, H, N, D] or [B, N, H, D], got shape {tuple(q.shape)}")
    return q.shape[:3] if tensor_layout == "HND" else (q.shape[0], q.shape[2], q.shape[1])


def _new_outputs(q: torch.Tensor, tensor_layout: str, return_lse: bool):
    """out shaped like q (contiguous) and lse, or None without return_lse."""
    shape = lse_shape(q, tensor_layout)  # (also the check of q's rank)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, (q.new_empty(shape, dtype=torch.float32) if return_lse else None)


def _with_empty_lse(q, out, lse):
    """The operator's outputs: its signature is fixed, so a missing lse is an empty tensor."""
    return out, (q.new_empty(0, dtype=torch.float32) if lse is None else lse)


def check_call_options(tensor_layout, is_causal, sm_scale, **quant):
    """Raises what a call with these options would (the core's checks of every value), without a call;
    `quant`: options of QUANT_DEFAULTS, the others at their defaults."""
    _core_options(tensor_layout, is_causal, sm_scale, False, *dict(QUANT_DEFAULTS, **quant).values())


@functools.lru_cache(maxsize=256)
def _core_options(tensor_layout, is_causal, sm_scale, return_lse, *quant):
    """The C++ options object for one set of arguments, built once and reused."""
    check_layout(tensor_layout)
    options = dict(zip(QUANT_DEFAULTS, quant), layout=tensor_layout, causal=is_causal, return_lse=return_lse)
    if sm_scale is not None:
        if not (math.isfinite(sm_scale) and sm_scale > 0):
            raise ValueError(f"sm_scale: expected a finite positive number, got {sm_scale}")
        check_float32_scale("sm_scale", sm_scale)
        options["sm_scale"] = sm_scale
    return _C.Options(options)


def check_float32_scale(name: str, value: float):
    """ValueError naming the argument where a positive finite scale is 0 or infinite in float32: the
    core takes a float32, in which 0 means "the default", so such a value would silently become
    1/sqrt(D), or an error about an infinity the caller never passed."""
    try:
        as_float32 = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        as_float32 = math.inf
    if as_float32 == 0 or math.isinf(as_float32):
        raise ValueError(f"{name}: {value} is {as_float32} in float32, the kernels' type (expected a positive "
                         "number within float32's range, about 1.4e-45 to 3.4e38)")


def scale_value(name: str, value) -> float:
    """A scale argument as a float: TypeError for what is not a real number, ValueError for an integer
    too large for a float (both naming the argument); the range is _core_options' check."""
    if isinstance(value, (str, bytes)):  # (float() would parse them)
        raise TypeError(f"{name}: expected a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}: {value} is too large for a float") from None
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None


# GPU workspace bytes per (shapes, dtype, device, options). The size depends
# only on these (the pre-pass layout), so a repeated call skips the size query
# and its validation pass; the forward call validates everything anyway and
# rejects a workspace that is too small.
_workspace_bytes_cache: dict = {}


def _workspace_bytes(specs, q, k, v, options, option_args) -> int:
    key = (q.shape, k.shape, v.shape, q.dtype, q.get_device(), option_args)
    nbytes = _workspace_bytes_cache.get(key)
    if nbytes is None:
        nbytes = _C.workspace_size(*specs, options)
        if len(_workspace_bytes_cache) >= 1024:
            _workspace_bytes_cache.clear()
        _workspace_bytes_cache[key] = nbytes
    return nbytes


# ----------------------------------------------------------------- forward


def _with_defaults(options: tuple) -> tuple:
    """forward's option arguments in full: the dispatcher drops trailing ones equal to their default."""
    return options + _OPTION_DEFAULTS[len(options):]


def _empty_result(q, k, v, tensor_layout, out, lse):
    """The outputs of a call with no query row or no key (B, H or N zero): as SDPA, empty, or with
    no key zeros (and lse = -inf). The core rejects empty tensors, so its checks that still mean
    something without data are made here."""
    check_attention_tensors(q, k, v, tensor_layout)
    out.zero_()
    if lse is not None:
        lse.fill_(-math.inf)
    return out, lse


def _torch_calls_file_present():
    """Whether the package directory holds a _torch_calls extension file (the configure step writes
    _torch_build.py; the module itself is its own build target)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return any(os.path.exists(os.path.join(here, "_torch_calls" + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _load_torch_calls():
    """sage_attention._torch_calls where it was built against the running torch, else None.

    The module (python/src/torch_calls.cpp) makes the CUDA calls with torch's tensor objects, 8-17 us
    less host time per call than the portable path; it links against the libtorch of its build, so it
    must not load under another. SAGE_TORCH_CALLS=0 turns it off (the tests compare both paths).
    """
    if os.environ.get("SAGE_TORCH_CALLS", "1") == "0":
        return None
    try:
        from . import _torch_build
    except ImportError:  # built without it (no CUDA torch where the package was built)
        return None
    built = (_torch_build.TORCH_VERSION, getattr(_torch_build, "TORCH_CUDA", None))
    running = (torch.__version__, torch.version.cuda)
    problem = None
    if built != running:
        problem = f"was built against torch {built[0]} (CUDA {built[1]}) but runs with {running[0]} (CUDA {running[1]})"
    else:
        try:
            from . import _torch_calls
            return _torch_calls
        except (ImportError, OSError) as e:
            if not _torch_calls_file_present():
                problem = f"was configured for torch {running[0]}, but its _torch_calls module is missing (not built)"
            else:
                problem = f"cannot load its module for torch {running[0]} ({e})"
    warnings.warn(f"sage_attention {problem}: it uses its portable binding, with 8-17 us more host time per "
                  "call (rebuild the package to get it back)", RuntimeWarning, stacklevel=2)
    return None


_torch_calls = _load_torch_calls()


def _run_forward(q, k, v, option_args):
    """One C++ call (quantization pre-pass + attention): (out, lse), lse None without return_lse.

    Both paths check the options' values first, then the tensors, then whether the GPU runs that
    combination: the same errors in the same order."""
    options = _core_options(*option_args)  # (held: the core reads it until the call returns)
    if _torch_calls is not None and q.is_cuda:
        # None where the call is not that path's (rank, empty tensors, head dim, dtype): below.
        result = _torch_calls.forward(q, k, v, options._address, MAX_HEAD_DIM)
        if result is not None:
            return result
    return _run_portable(q, k, v, option_args, options)


def _run_portable(q, k, v, option_args, options):
    """_run_forward's call through the portable binding (_C), with the caller's options (held until
    the call returns): every call _torch_calls does not take, and every call without it."""
    tensor_layout, _, _, return_lse = option_args[:4]
    check_dense(q=q, k=k, v=v)
    out, lse = _new_outputs(q, tensor_layout, return_lse)  # (q is 4-D past here)
    check_head_dim("q", q.shape[3])
    if not (q.numel() and k.numel()):
        return _empty_result(q, k, v, tensor_layout, out, lse)
    specs = (tensor_spec(q, "q"), tensor_spec(k, "k"), tensor_spec(v, "v"), tensor_spec(out),
             tensor_spec(lse) if return_lse else None)
    workspace, nbytes, stream = 0, 0, 0
    if q.is_cuda:
        nbytes = _workspace_bytes(specs, q, k, v, options, option_args)
        if nbytes:
            buffer = torch.empty(nbytes, dtype=torch.uint8, device=q.device)
            workspace = buffer.data_ptr()
        stream = torch._C._cuda_getCurrentRawStream(q.get_device())
    _C.forward(*specs, options, workspace, nbytes, stream)
    return out, lse


def _forward_kernel(q, k, v, *given_options):
    """CPU and CUDA kernel of the `forward` operator."""
    return _with_empty_lse(q, *_run_forward(q, k, v, _with_defaults(given_options)))


# The mode queries _eager_context needs are private torch APIs: where a
# torch version lacks them, every call goes through the dispatcher.
_function_mode_enabled = getattr(torch._C, "_is_torch_function_mode_enabled", None)
_dispatch_mode_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (torch.autograd.forward_ad.dual_level, torch.func.jvp); True
    where torch lacks the private level counter, so that every call then takes the checked path."""
    return getattr(_forward_ad, "_current_level", 0) >= 0


def has_tangent(*tensors) -> bool:
    """Whether forward-mode AD carries a tangent on any of `tensors` (which the kernels would drop)."""
    return forward_ad_active() and any(_forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def refuse_lost_derivatives(tensors, no_forward_ad: str, no_backward: str):
    """NotImplementedError (with these messages) where a derivative would be lost without a word: a
    forward-mode tangent (the kernels drop it), or a torch.func transform asking for gradients (torch's own
    error would not say why)."""
    if has_tangent(*tensors):
        raise NotImplementedError(no_forward_ad)
    if (torch._C._are_functorch_transforms_active() and torch.is_grad_enabled()
            and any(t.requires_grad for t in tensors)):
        raise NotImplementedError(no_backward)


_NO_FORWARD_AD = ("sage_attention has no forward-mode derivative (torch.func.jvp, torch.autograd.forward_ad): "
                  "its attention is inference-only; pass tensors without tangents, or use "
                  "torch.nn.functional.scaled_dot_product_attention where derivatives are needed.")


def _plain_tensors(q, k, v) -> bool:
    """The tensor half of a plain eager call (attention; _torch_calls' plain_tensor is the same in
    C++): exact torch.Tensor, not meta, no gradient to record, no functorch wrapper."""
    if type(q) is not torch.Tensor or type(k) is not torch.Tensor or type(v) is not torch.Tensor:
        return False
    if q.is_meta or k.is_meta or v.is_meta:  # the operator's fake kernel answers those
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    return not (_functorch_wrapped(q) or _functorch_wrapped(k) or _functorch_wrapped(v))


def _eager_context() -> bool:
    """The half of a plain eager call that is not about the tensors (attention): not traced by
    torch.compile, no torch function or dispatch mode, no forward-mode AD level open, no torch.func
    transform running (its outputs must be made by the dispatcher even from plain inputs the
    function closes over: the direct path then failed with "Cannot access data pointer" until
    session 72), and the private queries present."""
    if torch.compiler.is_compiling():  # first: Dynamo must not trace (and guard) what follows
        return False
    if _function_mode_enabled is None or _dispatch_mode_depth is None or _functorch_wrapped is None:
        return False
    return not (forward_ad_active() or _function_mode_enabled() or _dispatch_mode_depth()
                or torch._C._are_functorch_transforms_active())


def _call_if_plain(q, k, v, option_args):
    """The call, where _torch_calls' C++ finds q, k and v plain (what _plain_tensors checks, in a
    few loads instead of ~1-1.5 us of Python): (out, lse) from _torch_calls, or from the portable
    path where _torch_calls declines the call (a host tensor, an empty one...); NotImplemented for a
    tensor that is not plain, or options that raise (attention's checks then run, and raise, in
    their usual order)."""
    try:
        options = _core_options(*option_args)  # (held: the core reads it until the call returns)
    except Exception:  # noqa: BLE001 (raised again below, by the checks in their order)
        return NotImplemented
    result = _torch_calls.forward(q, k, v, options._address, MAX_HEAD_DIM, True)
    return _run_portable(q, k, v, option_args, options) if result is None else result


def attention(q, k, v, *option_args):
    """(out, lse or None): the `forward` operator, or its kernel directly when nothing needs the dispatcher.

    option_args are forward's twelve options, all given, in schema order. A plain eager call
    (_eager_context and _plain_tensors: plain tensors, no mode, not traced by torch.compile, no
    gradient or tangent to refuse) is one the operator would only hand to _run_forward, so it skips
    the dispatcher: each hop of a Python-registered kernel boxes its fifteen arguments, and skipping
    the two saves ~30 us a call (scripts/host_overhead.py), a third of a short call's host time.
    """
    if _eager_context():  # (the tensor half in C++ first, where _torch_calls is built)
        if _torch_calls is not None:
            result = _call_if_plain(q, k, v, option_args)
            if result is not NotImplemented:
                return result
        if _plain_tensors(q, k, v):
            return _run_forward(q, k, v, option_args)
    check_dense(q=q, k=k, v=v)  # (the dispatcher's own errors for these do not name the argument)
    out, lse = forward(q, k, v, *option_args)
    return out, (lse if option_args[3] else None)


def _forward_fake(q, k, v, *given_options):
    option_args = _with_defaults(given_options)
    _core_options(*option_args)  # the options' checks first, as the kernels make them
    tensor_layout, _, _, return_lse = option_args[:4]
    check_attention_tensors(q, k, v, tensor_layout)
    return _with_empty_lse(q, *_new_outputs(q, tensor_layout, return_lse))


_NO_BACKWARD = ("sage_attention has no backward pass yet: its attention is inference-only. Run it under "
                "torch.no_grad() / torch.inference_mode(), or use torch.nn.functional.scaled_dot_product_attention "
                "where gradients are needed.")


@torch.library.custom_op("sage_attention::forward_backward_unavailable", mutates_args=(),
                         device_types=("cpu", "cuda"))
def forward_backward_unavailable(grad_out: torch.Tensor, q_shape: list[int], k_shape: list[int],
                                 v_shape: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient formula of `forward`: raises when it runs (see the module docstring)."""
    raise NotImplementedError(_NO_BACKWARD)


@forward_backward_unavailable.register_fake
def _forward_backward_fake(grad_out, q_shape, k_shape, v_shape):
    return tuple(grad_out.new_empty(shape) for shape in (q_shape, k_shape, v_shape))


class _ForwardWithoutBackward(torch.autograd.Function):
    """Records `forward` on the autograd graph with a backward that refuses to run."""

    @staticmethod
    def forward(ctx, keyset, q, k, v, *options):
        with torch._C._AutoDispatchBelowAutograd():
            out, lse = forward.redispatch(keyset, q, k, v, *options)
        # (lse stays differentiable: a gradient that reaches it must reach the refusing backward, not vanish)
        ctx.shapes = (list(q.shape), list(k.shape), list(v.shape))
        ctx.num_options = len(options)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        grads = forward_backward_unavailable(grad_out, *ctx.shapes)
        return (None, *grads) + (None,) * ctx.num_options


def _forward_autograd(keyset, q, k, v, *args):
    """Autograd kernel: plain redispatch unless a derivative could be asked for, which is refused (forward
    mode, and torch.func's transforms, at once; reverse mode when the backward runs)."""
    below = keyset & torch._C._after_autograd_keyset
    refuse_lost_derivatives((q, k, v), _NO_FORWARD_AD, _NO_BACKWARD)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _ForwardWithoutBackward.apply(below, q, k, v, *args)
    with torch._C._AutoDispatchBelowAutograd():
        return forward.redispatch(below, q, k, v, *args)


_LIB.impl("forward", _forward_kernel, "CPU")
_LIB.impl("forward", _forward_kernel, "CUDA")
_LIB.impl("forward", _forward_autograd, "Autograd", with_keyset=True)
torch.library.register_fake("sage_attention::forward", _forward_fake, lib=_LIB)


# ----------------------------------------------------------------- LSE merge


def _merge_into(out_a, lse_a, out_b, lse_b, out, lse, tensor_layout):
    check_lse_dtypes(lse_a, lse_b)
    _C.merge_states(tensor_spec(out_a, "out_a"), tensor_spec(lse_a, "lse_a"), tensor_spec(out_b, "out_b"),
                    tensor_spec(lse_b, "lse_b"),
                    tensor_spec(out), tensor_spec(lse), tensor_layout, current_stream(out_a))


@torch.library.custom_op("sage_attention::merge_state", mutates_args=(), device_types=("cpu", "cuda"))
def merge_state(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor,
                tensor_layout: str = "HND") -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(out_a.shape, dtype=out_a.dtype, device=out_a.device)
    lse = torch.empty(lse_a.shape, dtype=torch.float32, device=lse_a.device)
    _merge_into(out_a, lse_a, out_b, lse_b, out, lse, tensor_layout)
    return out, lse


@merge_state.register_fake
def _merge_state_fake(out_a, lse_a, out_b, lse_b, tensor_layout="HND"):
    check_merge_tensors(out_a, lse_a, out_b, lse_b, tensor_layout)
    return (torch.empty(out_a.shape, dtype=out_a.dtype, device=out_a.device),
            torch.empty(lse_a.shape, dtype=torch.float32, device=lse_a.device))


@torch.library.custom_op("sage_attention::merge_state_inplace", mutates_args=("out_a", "lse_a"),
                         device_types=("cpu", "cuda"))
def merge_state_inplace(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor,
                        tensor_layout: str = "HND") -> None:
    _merge_into(out_a, lse_a, out_b, lse_b, out_a, lse_a, tensor_layout)


@merge_state_inplace.register_fake
def _merge_state_inplace_fake(out_a, lse_a, out_b, lse_b, tensor_layout="HND"):
    check_merge_tensors(out_a, lse_a, out_b, lse_b, tensor_layout)
    return None


@torch.library.custom_op("sage_attention::merge_backward_unavailable", mutates_args=(), device_types=("cpu", "cuda"))
def merge_backward_unavailable(grad_out: torch.Tensor, grad_lse: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient formula of merge_state: raises when it runs (see the module docstring)."""
    raise NotImplementedError("sage_attention.merge_state has no backward pass yet (inference-only)")


@merge_backward_unavailable.register_fake
def _merge_backward_fake(grad_out, grad_lse):
    return (torch.empty_like(grad_out), torch.empty_like(grad_lse), torch.empty_like(grad_out),
            torch.empty_like(grad_lse))


def _merge_backward(ctx, grad_out, grad_lse):
    grad_out_a, grad_lse_a, grad_out_b, grad_lse_b = merge_backward_unavailable(grad_out, grad_lse)
    return grad_out_a, grad_lse_a, grad_out_b, grad_lse_b, None


merge_state.register_autograd(_merge_backward)
