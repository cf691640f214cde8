"""A small compatibility layer that lets megatron-core run on CPU (gloo) when CUDA is absent.

megatron-core assumes CUDA in a few places that have nothing to do with the maths. Each patch
below names the megatron-core call it covers; `tests/dist/test_parallel_equivalence.py` and
`tests/dist/test_cpu_compat.py` exercise every one. Nothing here is applied when CUDA is available:
the GPU path runs megatron-core untouched.

1. ``torch.cuda.current_device()`` (tensor_parallel.layers, mappings, RoPE's ``inv_freq``,
   p2p_communication, param_and_grad_buffer, ...): returns the CPU device.
2. ``torch.cuda.synchronize()`` used by pipeline p2p and the optimizer: a no-op.
3. Hard-coded ``device="cuda"``, ``.cuda()``, ``.to("cuda")`` and ``pin_memory`` (pipeline_parallel.
   schedules' token counters, optimizer.clip_grads, optimizer.grad_scaler, optimizer.optimizer,
   the MoE aux-loss tracker, dist_checkpointing's exchange, ...): the modules of ``_CUDA_PLACING``
   see a ``torch`` whose tensor factories put a CUDA request on the CPU; ``Tensor.to`` does the
   same, and ``.cuda()`` and ``.pin_memory()`` are identities.
4. ``Tensor.type()`` string checks in optimizer.optimizer / distrib_optimizer / clip_grads that
   expect ``'torch.cuda.FloatTensor'``: a CPU tensor reports its CUDA name.

Patches 3 and 4 touch those few entry points rather than entering a ``TorchFunctionMode``: a mode
sees every torch call of the process and roughly triples the cost of a small CPU op (4 -> 12 us),
which is most of a tiny model's forward. The factories are replaced only in megatron-core's modules
that hard-code CUDA, not in ``torch`` itself: libraries that compare or swap ``torch.tensor``
(transformers' weight loading does) keep the real one.
5. ``tensor_parallel.random.CudaRNGStatesTracker`` (uses ``torch.cuda.get_rng_state``): replaced
   by a tracker over the CPU generator, so ``get_cuda_rng_tracker().fork()`` swaps CPU RNG states.
6. ``inference.communication_utils._is_cuda`` (asserts ``tensor.is_cuda`` before the pipeline
   broadcasts of generation): accepts any non-None tensor. ``is_cuda`` is a property that a
   ``TorchFunctionMode`` cannot intercept.
7. ``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state`` (activation
   recompute's ``CheckpointFunction`` saves and restores the CUDA generator): no CUDA generator
   exists, so there is no state; the CPU generator and the tracker's states, which recompute
   saves beside it, are all there is (tests/dist/test_recompute.py).
"""
from __future__ import annotations

import contextlib
import functools
import importlib

import torch

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
}
# The factories megatron-core calls with a hard-coded CUDA device (patch 3), and its modules that do.
_FACTORIES = ("tensor", "zeros", "ones", "empty", "empty_like", "randn")
_CUDA_PLACING = (
    "megatron.core.utils",
    "megatron.core.rerun_state_machine",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer.optimizer",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.tensor_parallel.data",
    "megatron.core.transformer.utils",
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
)
_CPU = torch.device("cpu")
_applied = False


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


def _on_cpu(factory):
    """``factory`` with a CUDA ``device`` keyword moved to the CPU and ``pin_memory`` dropped."""

    @functools.wraps(factory)
    def placed(*args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        return factory(*args, **kwargs)

    return placed


def _tensor_to(to):
    @functools.wraps(to)
    def moved(self, *args, **kwargs):
        if args and _is_cuda_device(args[0]):
            args = (_CPU, *args[1:])
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = _CPU
        return to(self, *args, **kwargs)

    return moved


def _tensor_type(type_):
    @functools.wraps(type_)
    def named(self, *args, **kwargs):
        if args or kwargs:
            return type_(self, *args, **kwargs)
        name = type_(self)
        return _CUDA_TYPE_NAMES.get(name, name)

    return named


def _identity(self, *args, **kwargs):
    return self


class _TorchOnCpu:
    """``torch`` as the modules of ``_CUDA_PLACING`` see it: the same module, with factories that
    place a CUDA request on the CPU."""

    def __init__(self):
        self.__dict__.update({name: _on_cpu(getattr(torch, name)) for name in _FACTORIES})

    def __getattr__(self, name):
        return getattr(torch, name)


def _patch_placement() -> None:
    """Patches 3 and 4."""
    view = _TorchOnCpu()
    for name in _CUDA_PLACING:
        importlib.import_module(name).torch = view
    torch.Tensor.to = _tensor_to(torch.Tensor.to)
    torch.Tensor.type = _tensor_type(torch.Tensor.type)
    torch.Tensor.cuda = _identity
    torch.Tensor.pin_memory = _identity


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
    global _applied
    if torch.cuda.is_available():
        return False
    if _applied:
        return True
    torch.cuda.current_device = lambda: torch.device("cpu")  # patch 1
    torch.cuda.synchronize = lambda *a, **k: None  # patch 2
    _patch_placement()  # patches 3 and 4
    install_cpu_rng_tracker()  # patch 5
    from megatron.core.inference import communication_utils

    communication_utils._is_cuda = _require_tensor  # patch 6
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: None  # patch 7
    mrandom._set_cuda_rng_state = lambda *a, **k: None
    _applied = True
    return True


def cpu_compat_active() -> bool:
    return _applied
