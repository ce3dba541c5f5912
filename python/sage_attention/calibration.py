"""Adaptive 4/8-bit Q K^T for `sageattn`: calibrate once, then pick the format per call.

INT4 Q K^T has twice INT8's peak rate on Ampere/Ada tensor cores (Hopper has no INT4 tensor cores:
there it is slower) but hurts some attention calls much more than others.
Calibration measures the INT4 path of every call of a few representative prompts, keyed by a layer
id of your choosing and, for diffusion models, the timestep; the plan gives the worst fraction of
the (layer, timestep) keys INT8 and the rest INT4::

    from sage_attention.calibration import Calibrator, Plan

    calibrator = Calibrator()
    for prompt in prompts:                         # in the model's attention, per call:
        out = calibrator.attention(q, k, v, layer_id=i, timestep=t, is_causal=True)
    calibrator.make_plan(fraction_int8=0.3).save("plan.json")

    plan = Plan.load("plan.json")                  # at run time, per call:
    out = sageattn(q, k, v, is_causal=True, **plan.sageattn_kwargs(layer_id=i, timestep=t))

`with calibrator:` / `with plan:` make one the active one (`active_calibrator()`, `active_plan()`),
for code that cannot pass it down to the attention calls. A `Recorder` writes the inputs of the
calls instead, for `sage calibrate --recordings DIR` (the C++ calibrator, same scores).

The score of a call is cos_sim * (1 - rel_l1) of the INT4 output against exact attention in
float64 (torch, on the same inputs), over all output elements: the definition of the C++
`sage::Calibrator` (include/sage/calibration.h). The INT4 output is `sageattn`'s with
qk_format="int4" and the plan's INT4 granularity, the call's other options unchanged, so on the
CPU it is the library's bit-faithful emulation of the kernels; the two implementations agree to
rounding of the sums (about 1e-12). While calibrating, `Calibrator.attention` returns the exact
float64 attention in the inputs' dtype, so that the model runs on accurate activations. Details,
the plan's JSON schema and the run-time rules for unseen timesteps: docs/calibration.md.
"""

from __future__ import annotations

import contextvars
import json
import math
import operator
import os
import threading
import warnings
from dataclasses import dataclass

import torch

from . import _ops

__all__ = ["Calibrator", "Plan", "PlanEntry", "Recorder", "active_calibrator", "active_plan"]

PLAN_FORMAT = "sage-attention calibration plan"
PLAN_VERSION = 1
RECORDING_FORMAT = "sage-attention attention recording"
RECORDING_VERSION = 1
_METRIC = "cos_sim * (1 - rel_l1) of the INT4 Q K^T path against exact attention, mean over calls"
_GRANULARITIES = ("per_block", "per_warp", "per_thread")
_QK_FORMATS = ("int4", "int8")
# The tolerance that keeps an exact product such as 0.3 * 10 = 3.0000000000000004 from rounding
# up to 4 keys (the C++ planner uses the same).
_FRACTION_TOLERANCE = 1e-9
_INT64_MAX = 2**63 - 1

# The objects of the innermost `with calibrator:` / `with plan:` blocks: per
# thread and asyncio task (context variables) in eager code. torch.compile
# cannot trace ContextVar.get, so traced code reads a process-wide mirror of
# the same activations instead (a model compiled with attn_implementation=
# "sage" passes layer ids, and sageattn looks here on every call): the most
# recently entered block of each kind that is still open in any thread or
# task (_open_blocks), None once all are closed.
_active_calibrator = contextvars.ContextVar("sage_attention_calibrator", default=None)
_active_plan = contextvars.ContextVar("sage_attention_plan", default=None)
_compiled_view = {"calibrator": None, "plan": None}
# The open blocks of this thread or task, innermost last: (object, token of its context variable, state
# at entry); a block entered and exited in different contexts is refused by ContextVar.reset.
_context_blocks = contextvars.ContextVar("sage_attention_blocks", default=())
_open_blocks = {"calibrator": [], "plan": []}  # process-wide, in entry order: [(object, block id)]
# (Reentrant: a finalizer that garbage collection runs inside the locked section may open a block.)
_open_blocks_lock = threading.RLock()


def active_calibrator() -> "Calibrator | None":
    """The calibrator of the innermost `with calibrator:` block, or None."""
    if torch.compiler.is_compiling():
        return _compiled_view["calibrator"]
    return _active_calibrator.get()


def active_plan() -> "Plan | None":
    """The plan of the innermost `with plan:` block, or None."""
    if torch.compiler.is_compiling():
        return _compiled_view["plan"]
    return _active_plan.get()


class _Activation:
    """`with obj:` makes obj the active calibrator or plan (`_slot`) for the block: in its own
    thread or asyncio task, so that one object may be active in several at once."""

    _slot: str

    def _variable(self) -> contextvars.ContextVar:
        return _active_calibrator if self._slot == "calibrator" else _active_plan

    def _block_state(self):
        """What __exit__ gets back as `state` (subclasses: to check the block's work)."""
        return None

    def _block_done(self, state):
        """Called at the end of a block with what _block_state gave at its start."""

    def __enter__(self):
        block_id, state = object(), self._block_state()
        token = self._variable().set(self)
        _context_blocks.set(_context_blocks.get() + ((self, token, block_id, state),))
        with _open_blocks_lock:
            _open_blocks[self._slot].append((self, block_id))
            _compiled_view[self._slot] = self
        return self

    def __exit__(self, *exc_info):
        blocks = _context_blocks.get()
        index = next((i for i in reversed(range(len(blocks))) if blocks[i][0] is self), None)
        if index is not None and index != len(blocks) - 1:
            # Refused with nothing changed: the block is still this thread's (and the process's) until the blocks
            # opened inside it end and it is ended again.
            raise RuntimeError(f"sage_attention: a `with` block of this {type(self).__name__} ends before a block "
                               f"opened inside it ({type(blocks[-1][0]).__name__}) ended")
        block_id = None if index is None else blocks[index][2]
        try:
            if index is None:
                raise RuntimeError(f"sage_attention: a `with` block of this {type(self).__name__} ends in another "
                                   "thread or task than it began")
            _, token, _, state = blocks[index]
            _context_blocks.set(blocks[:index])
            try:
                self._variable().reset(token)
            except ValueError:  # (a task that inherited the block from the one that opened it)
                raise RuntimeError(f"sage_attention: a `with` block of this {type(self).__name__} ends in another "
                                   "task than it began") from None
        finally:  # (also when refused for another thread or task: no block left behind in the process-wide view)
            self._close_open_block(block_id)
        if exc_info[0] is None and not any(block[0] is self for block in blocks[:index]):
            self._block_done(state)  # (the outermost block of this object in its thread or task)
        return False

    def _close_open_block(self, block_id):
        """Drops the process-wide entry of block `block_id` (None: this object's newest) and updates the
        compiled view."""
        with _open_blocks_lock:
            still_open = _open_blocks[self._slot]
            for i in reversed(range(len(still_open))):
                if still_open[i][1] is block_id or (block_id is None and still_open[i][0] is self):
                    del still_open[i]
                    break
            _compiled_view[self._slot] = still_open[-1][0] if still_open else None


def _check_fraction(fraction_int8):
    if isinstance(fraction_int8, bool) or not (isinstance(fraction_int8, (int, float)) and
                                               0.0 <= fraction_int8 <= 1.0):
        raise ValueError(f"fraction_int8: must be in [0, 1], got {fraction_int8!r}")


def checked_key(layer_id, timestep):
    """(layer_id, timestep) as ints (any integer type: numpy's too), timestep None or >= 0; TypeError
    or ValueError naming the argument otherwise (a bool is not a layer id)."""
    return _key_part("layer_id", layer_id), None if timestep is None else _key_part("timestep", timestep)


def _key_part(name, value):
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int >= 0, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int >= 0, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    if value > _INT64_MAX:
        raise ValueError(f"{name}: must fit int64 (at most 2**63 - 1, as in the C++ library), got {value}")
    return value


def _sort_key(key):
    """Key order of the C++ library: by layer, then timestep, None (-1 there) first."""
    layer, timestep = key
    return (layer, -1 if timestep is None else timestep)


# ---- exact attention and the score ----


def _to_hnd(t, tensor_layout):
    return t.transpose(1, 2) if tensor_layout == "NHD" else t


def exact_attention(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, causal_align="top_left"):
    """Exact softmax attention in float64 and its LSE, in the layout of q (out) and [B, H, N] (lse).

    GQA by head groups; a query row that sees no key gets 0 (and lse -inf), as in the C++
    reference. One query head at a time, to keep the score matrix small.
    """
    qh, kh, vh = (_to_hnd(t, tensor_layout).double() for t in (q, k, v))
    heads_q, heads_kv, nq, nk = qh.shape[1], kh.shape[1], qh.shape[2], kh.shape[2]
    # A given scale is a float32 option (the kernels' and the C++ reference's), the default 1/sqrt(D) in float64 as
    # there.
    scale = qh.shape[-1] ** -0.5 if sm_scale is None else torch.tensor(sm_scale, dtype=torch.float32).item()
    visible = None
    if is_causal:
        shift = nk - nq if causal_align == "bottom_right" else 0
        rows = torch.arange(nq, device=qh.device)[:, None]
        visible = torch.arange(nk, device=qh.device)[None, :] <= rows + shift
    out = torch.empty_like(qh)
    lse = torch.empty(qh.shape[:3], dtype=torch.float64, device=qh.device)
    for h in range(heads_q):
        kv_head = h // (heads_q // heads_kv)
        scores = qh[:, h] @ kh[:, kv_head].transpose(-1, -2) * scale
        if visible is not None:
            scores = scores.masked_fill(~visible, float("-inf"))
        lse[:, h] = torch.logsumexp(scores, -1)
        probs = torch.exp(scores - lse[:, h, :, None]).nan_to_num(0.0)
        out[:, h] = probs @ vh[:, kv_head]
    return _to_hnd(out, tensor_layout), lse


def attention_score(test, reference) -> float:
    """cos_sim * (1 - rel_l1) of `test` against `reference` over all elements (the C++ metrics:
    NaN when either holds a NaN or an infinity; two zero tensors have cos_sim 1)."""
    t, r = test.double().flatten(), reference.double().flatten().to(test.device)
    if not (torch.isfinite(t).all() and torch.isfinite(r).all()):
        return math.nan
    norm2_t, norm2_r = float(t.dot(t)), float(r.dot(r))
    if norm2_t == 0.0 and norm2_r == 0.0:
        cos_sim = 1.0
    elif norm2_t == 0.0 or norm2_r == 0.0:
        cos_sim = 0.0
    else:
        cos_sim = float(t.dot(r)) / math.sqrt(norm2_t * norm2_r)
    abs_diff, abs_ref = float((t - r).abs().sum()), float(r.abs().sum())
    rel_l1 = abs_diff / abs_ref if abs_ref > 0 else (math.inf if abs_diff > 0 else 0.0)
    return cos_sim * (1.0 - rel_l1)


# ---- calibration ----

_NOTHING_MEASURED = (
    "sage_attention.calibration: {where}. Calls are measured only with a layer_id: sageattn(..., "
    "layer_id=i), or a transformers model with attn_implementation='sage' whose attention modules have a "
    "layer_idx (else call sage_attention.integrations.transformers.assign_layer_ids(model) first); the "
    "SDPA override and the diffusers integration pass none.")


class Calibrator(_Activation):
    """Scores the INT4 path per (layer_id, timestep) and turns the scores into a `Plan`.

    int4_granularity: the Q/K scale grouping of the INT4 path measured and planned ("per_thread",
    SageAttention2's). measure_device: where the INT4 path runs; "cpu" (the default) is the
    library's emulation (bit-faithful, slow); "cuda" runs the GPU's INT4 kernels (the mma.sync
    family; on Hopper correct but not fast). attention: the function that runs the INT4 path
    (default `sageattn`).
    One calibrator may be active in several threads at once; its scores are then added from each.
    """

    _slot = "calibrator"

    def __init__(self, int4_granularity="per_thread", measure_device="cpu", attention=None):
        if int4_granularity not in _GRANULARITIES:
            raise ValueError(f"int4_granularity: expected one of {_GRANULARITIES}, got {int4_granularity!r}")
        self.int4_granularity = int4_granularity
        self.measure_device = torch.device(measure_device)
        self._attention = attention
        self._sums = {}  # (layer_id, timestep) -> [score sum, calls]
        self._calls = 0
        self._sums_lock = threading.Lock()  # (calls measured in several threads at once)

    def _int4_attention(self, *args, **kwargs):
        if self._attention is None:
            from . import sageattn  # late: the package imports this module

            self._attention = sageattn
        return self._attention(*args, **kwargs)

    def record(self, q, k, v, *, layer_id, timestep=None, tensor_layout="HND", is_causal=False, sm_scale=None,
               causal_align="top_left", **options) -> float:
        """Measures one call (sageattn's arguments; `options` its quantization keywords, whose
        qk_format and qk_granularity are replaced by INT4's) and returns its score."""
        return self._measure(q, k, v, layer_id, timestep, tensor_layout, is_causal, sm_scale, causal_align, options)[0]

    def attention(self, q, k, v, *, layer_id, timestep=None, tensor_layout="HND", is_causal=False, sm_scale=None,
                  causal_align="top_left", return_lse=False, **options):
        """`record`, then the exact attention in q's dtype and device (and its float32 lse with
        return_lse): what the model should see while it is being calibrated."""
        _, out, lse = self._measure(q, k, v, layer_id, timestep, tensor_layout, is_causal, sm_scale, causal_align,
                                    options)
        out = out.to(q.dtype)
        return (out, lse.float()) if return_lse else out

    def _measure(self, q, k, v, layer_id, timestep, tensor_layout, is_causal, sm_scale, causal_align, options):
        layer_id, timestep = checked_key(layer_id, timestep)
        options = {name: value for name, value in options.items()
                   if name != "qk_format" and name not in _ops.GRANULARITY_SPELLINGS}
        device = self.measure_device
        int4_out = self._int4_attention(q.to(device), k.to(device), v.to(device), tensor_layout=tensor_layout,
                                        is_causal=is_causal, sm_scale=sm_scale, causal_align=causal_align,
                                        qk_format="int4", qk_granularity=self.int4_granularity, **options)
        exact_out, lse = exact_attention(q, k, v, tensor_layout, is_causal, sm_scale, causal_align)
        score = attention_score(int4_out, exact_out)
        self.add_score(layer_id, timestep, score)
        return score, exact_out, lse

    def add_score(self, layer_id, timestep, score):
        """Adds a score measured elsewhere (same definition); a NaN makes the key the worst."""
        layer_id, timestep = checked_key(layer_id, timestep)
        score = float(score)  # (a numpy or 0-d torch number too: the plan file holds plain floats)
        if math.isinf(score):
            raise ValueError(f"score: must be finite or NaN, got {score!r}")
        with self._sums_lock:
            entry = self._sums.setdefault((layer_id, timestep), [0.0, 0])
            if math.isinf(entry[0] + score):  # (the mean would be infinite, and the plan file cannot hold it)
                raise ValueError(f"score: the sum of this key's scores would overflow, adding {score!r} "
                                 f"to {entry[0]!r}")
            entry[0] += score
            entry[1] += 1
            self._calls += 1

    def _block_state(self):
        return self._calls

    def _block_done(self, calls_before):
        if self._calls == calls_before:
            warnings.warn(_NOTHING_MEASURED.format(where="the `with calibrator:` block ended, and no call was "
                                                   "measured in it"), RuntimeWarning, stacklevel=3)

    @property
    def scores(self):
        """{(layer_id, timestep): (mean score, calls)} in key order."""
        with self._sums_lock:
            items = [(key, tuple(entry)) for key, entry in self._sums.items()]
        ordered = sorted(items, key=lambda item: _sort_key(item[0]))
        return {key: (total / calls, calls) for key, (total, calls) in ordered}

    def make_plan(self, fraction_int8=0.3) -> "Plan":
        """The ceil(fraction_int8 * keys) worst keys (lowest mean score, NaN first, ties by key
        order) get INT8, the others INT4. Deterministic."""
        _check_fraction(fraction_int8)
        if not self._sums:
            warnings.warn(_NOTHING_MEASURED.format(where="make_plan: no call was measured, so the plan is empty "
                                                   "(every call gets INT8)"), RuntimeWarning, stacklevel=2)
        entries = [PlanEntry(layer, timestep, score, calls, "int4")
                   for (layer, timestep), (score, calls) in self.scores.items()]
        worst_first = sorted(entries, key=lambda e: (not math.isnan(e.score), 0.0 if math.isnan(e.score) else e.score,
                                                     _sort_key((e.layer, e.timestep))))
        int8_keys = min(len(entries), max(0, math.ceil(fraction_int8 * len(entries) - _FRACTION_TOLERANCE)))
        for entry in worst_first[:int8_keys]:
            entry.qk_format = "int8"
        return Plan(entries, float(fraction_int8), self.int4_granularity)


# ---- the plan ----


@dataclass
class PlanEntry:
    layer: int
    timestep: int | None
    score: float  # mean over the calls; NaN if any call's INT4 output was non-finite
    calls: int
    qk_format: str  # "int4" or "int8"


class Plan(_Activation):
    """A qk_format per (layer_id, timestep), from `Calibrator.make_plan` or a plan file.

    The run-time rules (`decide`), in order: the exact key; the layer's timestep-less entry,
    which covers all its timesteps; for an unseen timestep the layer's nearest calibrated one
    (INT8 when two equally near ones disagree); a timestep-less call of a layer calibrated per
    timestep gets INT8 if any of its timesteps has it; an unknown layer gets default_qk_format
    ("int8", the safe choice).
    """

    _slot = "plan"

    def __init__(self, entries=(), fraction_int8=0.3, int4_granularity="per_thread", default_qk_format="int8"):
        if int4_granularity not in _GRANULARITIES:
            raise ValueError(f"int4_granularity: expected one of {_GRANULARITIES}, got {int4_granularity!r}")
        if default_qk_format not in _QK_FORMATS:
            raise ValueError(f"default_qk_format: expected one of {_QK_FORMATS}, got {default_qk_format!r}")
        _check_fraction(fraction_int8)
        self.entries = sorted(entries, key=lambda e: _sort_key((e.layer, e.timestep)))
        self.fraction_int8 = fraction_int8
        self.int4_granularity = int4_granularity
        self.default_qk_format = default_qk_format
        self._by_layer = {}
        for entry in self.entries:
            self._by_layer.setdefault(entry.layer, []).append(entry)

    def decide(self, layer_id, timestep=None):
        """(qk_format, how it was found): "exact", "layer", "nearest-timestep", "layer-worst" or
        "default" (the names of the C++ sage::PlanMatch). The key as `checked_key` takes it (None: no
        timestep)."""
        layer_id, timestep = checked_key(layer_id, timestep)
        layer_entries = self._by_layer.get(layer_id)
        if not layer_entries:
            return self.default_qk_format, "default"
        for entry in layer_entries:
            if entry.timestep == timestep:
                return entry.qk_format, "exact"
        if layer_entries[0].timestep is None:
            return layer_entries[0].qk_format, "layer"
        if timestep is None:
            return ("int8" if any(e.qk_format == "int8" for e in layer_entries) else "int4"), "layer-worst"
        nearest = min(abs(e.timestep - timestep) for e in layer_entries)
        formats = {e.qk_format for e in layer_entries if abs(e.timestep - timestep) == nearest}
        return ("int8" if "int8" in formats else "int4"), "nearest-timestep"

    def sageattn_kwargs(self, layer_id, timestep=None) -> dict:
        """The keywords to add to this call's `sageattn`: qk_format, and INT4's granularity."""
        qk_format, _ = self.decide(layer_id, timestep)
        if qk_format == "int4":
            return {"qk_format": "int4", "qk_granularity": self.int4_granularity}
        return {"qk_format": "int8"}

    def to_json(self) -> str:
        """The plan file's text (docs/calibration.md); deterministic."""
        entries = ",\n    ".join(
            json.dumps({"layer": e.layer, "timestep": e.timestep, "score": None if not math.isfinite(e.score) else e.score,
                        "calls": e.calls, "qk_format": e.qk_format}) for e in self.entries)
        header = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "metric": _METRIC,
                  "fraction_int8": self.fraction_int8, "int4_granularity": self.int4_granularity,
                  "default_qk_format": self.default_qk_format}
        lines = ",\n".join(f"  {json.dumps(name)}: {json.dumps(value)}" for name, value in header.items())
        return "{\n" + lines + ",\n  \"entries\": [" + (f"\n    {entries}\n  ]" if entries else "]") + "\n}\n"

    @classmethod
    def from_json(cls, text) -> "Plan":
        """Reads a plan file's text; ValueError names what is wrong and where. Unknown members
        are ignored (later versions may add some)."""
        try:
            document = json.loads(text, object_pairs_hook=_members_once, parse_constant=_refuse_constant,
                                  parse_float=_finite_float)
        except json.JSONDecodeError as e:
            raise ValueError(f"plan: line {e.lineno}, column {e.colno}: {e.msg}") from None
        except ValueError as e:  # (from the hooks, which know no position)
            raise ValueError(f"plan: {e}") from None
        if not isinstance(document, dict):
            raise ValueError(f"plan: the document: expected an object, got {type(document).__name__}")
        if _member(document, "", "format", str) != PLAN_FORMAT:
            raise ValueError(f"plan: format: expected {PLAN_FORMAT!r} (not a calibration plan?), "
                             f"got {document['format']!r}")
        version = _member(document, "", "version", int)
        if version != PLAN_VERSION:
            raise ValueError(f"plan: version: this library reads version {PLAN_VERSION}, got {version}")
        fraction = _member(document, "", "fraction_int8", (int, float))
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"plan: fraction_int8: must be in [0, 1], got {fraction}")
        granularity = _choice(document, "", "int4_granularity", _GRANULARITIES)
        default_format = _choice(document, "", "default_qk_format", _QK_FORMATS)
        items = _member(document, "", "entries", list)
        entries = [_parse_entry(item, f"entries[{i}]") for i, item in enumerate(items)]
        seen = set()
        for entry in entries:
            if (entry.layer, entry.timestep) in seen:
                timestep = "null" if entry.timestep is None else entry.timestep
                raise ValueError(f"plan: entries: layer {entry.layer}, timestep {timestep} appears twice")
            seen.add((entry.layer, entry.timestep))
        return cls(entries, fraction, granularity, default_format)

    def save(self, path):
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json())

    @classmethod
    def load(cls, path) -> "Plan":
        with open(path, encoding="utf-8") as file:
            text = file.read()
        try:
            return cls.from_json(text)
        except ValueError as e:
            raise ValueError(f"{path}: {str(e).removeprefix('plan: ')}") from None


# The JSON the C++ reader takes, no more: Python's json module would keep the last of two equal
# members and read NaN, Infinity and 1e400 (as inf), where the C++ library refuses the file.
def _members_once(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate member {json.dumps(key)}")
        obj[key] = value
    return obj


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON (a NaN score is written as null)")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _int64_member(obj, path, key, minimum, rule):
    """An integer member that fits int64 (as the C++ reader requires) and is >= minimum (`rule` says so)."""
    value = _member(obj, path, key, int)
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise ValueError(f"plan: {path}.{key}: integer out of range: {value}")
    if value < minimum:
        raise ValueError(f"plan: {path}.{key}: must be {rule}, got {value}")
    return value


def _member(obj, path, key, types, optional=False):
    """obj[key] checked against `types` (bool is never an int here); ValueError names the path."""
    where = f"{path}.{key}" if path else key
    if key not in obj:
        if optional:
            return None
        raise ValueError(f"plan: {path or 'the document'}: missing member {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(f"plan: {where}: expected {_type_names(types)}, got {json.dumps(value)}")
    return value


def _type_names(types):
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", float: "a number", str: "a string", list: "an array", dict: "an object"}
    return " or ".join(names[t] for t in types)


def _choice(obj, path, key, choices):
    value = _member(obj, path, key, str)
    if value not in choices:
        raise ValueError(f"plan: {f'{path}.{key}' if path else key}: expected one of {choices}, got {value!r}")
    return value


def _parse_entry(item, path):
    if not isinstance(item, dict):
        raise ValueError(f"plan: {path}: expected an object, got {json.dumps(item)}")
    layer = _int64_member(item, path, "layer", 0, ">= 0")
    if "timestep" not in item:
        raise ValueError(f"plan: {path}: missing member 'timestep'")
    timestep = None if item["timestep"] is None else _int64_member(item, path, "timestep", 0, ">= 0 or null")
    if "score" not in item:
        raise ValueError(f"plan: {path}: missing member 'score'")
    score = math.nan if item["score"] is None else float(_member(item, path, "score", (int, float)))
    calls = _int64_member(item, path, "calls", 1, ">= 1")
    return PlanEntry(layer, timestep, score, calls, _choice(item, path, "qk_format", _QK_FORMATS))


# ---- recordings for `sage calibrate` ----


class Recorder:
    """Writes attention calls' inputs as a recording directory for `sage calibrate --recordings`
    (format: docs/calibration.md): raw little-endian tensors and an index.json, written on
    `close()` or at the end of a `with` block. Each call's keywords are sageattn's."""

    _OPTIONS = ("smooth_q", "smooth_k", "smooth_v", "pv_format", "pv_accum")
    _DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._calls = []

    def record(self, q, k, v, *, layer_id, timestep=None, tensor_layout="HND", is_causal=False, sm_scale=None,
               causal_align="top_left", **options):
        layer_id, timestep = checked_key(layer_id, timestep)
        unknown = set(options) - set(self._OPTIONS) - {"qk_format", *_ops.GRANULARITY_SPELLINGS}
        if unknown:
            raise TypeError(f"Recorder.record: unexpected keyword arguments {sorted(unknown)}")
        if q.dtype not in self._DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
            raise ValueError(f"Recorder.record: q, k, v must share one of {list(self._DTYPES.values())}")
        # Checked and normalised as sageattn takes them, so that `sage calibrate` reads what was recorded (it
        # takes JSON booleans only, for instance, where sageattn also takes 1 and 0).
        for name, tensor in (("q", q), ("k", k), ("v", v)):
            if tensor.dim() != 4:
                raise ValueError(f"Recorder.record: {name}: expected a rank-4 tensor, got shape {tuple(tensor.shape)}")
        stem = f"{len(self._calls):06d}"
        call = {"layer": layer_id, "timestep": timestep, "dtype": self._DTYPES[q.dtype], "layout": str(tensor_layout),
                "causal": _ops.flag("is_causal", is_causal), "causal_align": causal_align,
                "sm_scale": None if sm_scale is None else _ops.scale_value("sm_scale", sm_scale)}
        recorded = {name: _ops.option_value(name, options[name]) for name in self._OPTIONS if name in options}
        _ops.check_call_options(tensor_layout, call["causal"], call["sm_scale"], causal_align=causal_align, **recorded)
        call.update(recorded)
        for name, tensor in (("q", q), ("k", k), ("v", v)):
            file = f"{stem}_{name}.bin"
            tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tofile(os.path.join(self.directory, file))
            call[name] = {"file": file, "shape": list(tensor.shape)}
        self._calls.append(call)

    def close(self):
        document = {"format": RECORDING_FORMAT, "version": RECORDING_VERSION, "calls": self._calls}
        with open(os.path.join(self.directory, "index.json"), "w", encoding="utf-8") as file:
            json.dump(document, file, indent=1)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
