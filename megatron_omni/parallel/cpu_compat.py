"""A small compatibility layer that lets megatron-core run on CPU (gloo) when CUDA is absent.

megatron-core assumes CUDA in a few places that have nothing to do with the maths. Each patch
below names the megatron-core call it covers; `tests/dist/test_parallel_equivalence.py` and
`tests/dist/test_cpu_compat.py` exercise every one. Nothing here is applied when CUDA is available:
the GPU path runs megatron-core untouched.

1. ``torch.cuda.current_device()`` (tensor_parallel.layers, mappings, RoPE's ``inv_freq``,
   p2p_communication, param_and_grad_buffer, ...): returns the CPU device.
2. ``torch.cuda.synchronize()`` used by pipeline p2p and the optimizer: a no-op.
3. Hard-coded ``device="cuda"``, ``.cuda()`` and ``pin_memory()`` (pipeline_parallel.schedules'
   token counters, optimizer.clip_grads, optimizer.grad_scaler, optimizer.optimizer): a
   ``TorchFunctionMode`` rewrites any CUDA device argument to CPU and makes ``.cuda()`` and
   ``pin_memory()`` identities.
4. ``Tensor.type()`` string checks in optimizer.optimizer / distrib_optimizer / clip_grads that
   expect ``'torch.cuda.FloatTensor'``: the same mode reports CPU tensors under their CUDA names.
   ``cuda_redirect_suspended()`` leaves the mode for a block that needs neither patch (the
   generation engine's decode).
5. ``tensor_parallel.random.CudaRNGStatesTracker`` (uses ``torch.cuda.get_rng_state``): replaced
   by a tracker over the CPU generator, so ``get_cuda_rng_tracker().fork()`` swaps CPU RNG states.
6. ``inference.communication_utils._is_cuda`` (asserts ``tensor.is_cuda`` before the pipeline
   broadcasts of generation): accepts any non-None tensor. ``is_cuda`` is a property that a
   ``TorchFunctionMode`` cannot intercept.
8. ``transformer.utils.get_default_causal_mask`` (``torch.ones(..., device="cuda")``, read by the
   fused softmax when no mask is given): a CPU mask. Activation recompute re-runs the forward inside
   autograd's backward, where the mode of patches 3 and 4 does not apply.
7. ``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state`` (activation
   recompute's ``CheckpointFunction`` saves and restores the CUDA generator): no CUDA generator
   exists, so there is no state; the CPU generator and the tracker's states, which recompute
   saves beside it, are all there is (tests/dist/test_recompute.py).
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
}

_applied = False
_mode: "_CudaToCpuMode | None" = None


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placement requests to CPU (patches 3 and 4)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = torch.device("cpu")
        if func in (torch.Tensor.cuda, torch.Tensor.pin_memory):
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if func is torch.Tensor.to:
            args = tuple(torch.device("cpu") if _is_cuda_device(a) else a for a in args)
        return func(*args, **kwargs)


class CpuRNGStatesTracker:
    """Patch 5: megatron's named RNG-state tracker over the CPU default generator.

    Same interface as ``CudaRNGStatesTracker`` (add, fork, get_states, set_states, reset), so
    dropout inside tensor-parallel regions draws from a per-TP-rank stream exactly as on GPU.
    """

    def __init__(self, *args, **kwargs):
        self.reset()

    def is_initialized(self):
        return self._is_initialized

    def reset(self):
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(outer)

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _causal_mask(sq: int) -> torch.Tensor:
    """Patch 8: megatron's default causal mask (True above the diagonal), built on the CPU."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _require_tensor(tensor) -> None:
    assert tensor is not None


def install_cpu_rng_tracker() -> None:
    """Make megatron's global RNG tracker the CPU one (idempotent, survives ``force_reset``)."""
    from megatron.core.tensor_parallel import random as mrandom

    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    if not isinstance(mrandom._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker):
        mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def apply_cpu_compat() -> bool:
    """Apply every patch once if CUDA is absent; returns whether the layer is active."""
    global _applied, _mode
    if torch.cuda.is_available():
        return False
    if _applied:
        return True
    torch.cuda.current_device = lambda: torch.device("cpu")  # patch 1
    torch.cuda.synchronize = lambda *a, **k: None  # patch 2
    _mode = _CudaToCpuMode()
    _mode.__enter__()  # patches 3 and 4, for the life of the process
    install_cpu_rng_tracker()  # patch 5
    from megatron.core.inference import communication_utils

    communication_utils._is_cuda = _require_tensor  # patch 6
    from megatron.core.fusions import fused_softmax
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer import utils as transformer_utils

    transformer_utils.get_default_causal_mask = fused_softmax.get_default_causal_mask = _causal_mask  # patch 8
    mrandom._get_cuda_rng_state = lambda *a, **k: None  # patch 7
    mrandom._set_cuda_rng_state = lambda *a, **k: None
    _applied = True
    return True


def cpu_compat_active() -> bool:
    return _applied


@contextlib.contextmanager
def cuda_redirect_suspended():
    """The mode of patches 3 and 4 left inside the block, for code that makes no CUDA placement
    request of its own (the generation engine's forwards and sampling; transformers' ``generate``
    in tools/bench_rollout.py): the mode routes every torch call of the process through Python,
    which triples the cost of a small CPU op (4 -> 12 us). A no-op where the layer is inactive,
    and where another mode was entered after this one (leaving ours would reorder the stack)."""
    if _mode is None or torch.overrides._get_current_function_mode() is not _mode:
        yield
        return
    _mode.__exit__(None, None, None)
    try:
        yield
    finally:
        _mode.__enter__()
