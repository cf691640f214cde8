"""Each patch of the CPU compatibility layer, through the megatron-core call it covers.
Runs inside `torchrun --nproc-per-node 2` (tests/test_dist_suites.py: cpu_compat-x2)."""
import shutil
import tempfile

import pytest
import torch
import torch.distributed as dist

from megatron_omni.parallel import cpu_compat_active, init_distributed, initialize_parallel, set_seed

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is only applied without CUDA")


@pytest.fixture(scope="module", autouse=True)
def world():
    init_distributed()
    initialize_parallel(tensor_model_parallel_size=2)
    yield


def test_layer_is_active():
    assert cpu_compat_active()


def test_current_device_rope_inv_freq():
    """Patch 1: RotaryEmbedding puts inv_freq on torch.cuda.current_device()."""
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    rope = RotaryEmbedding(kv_channels=16, rotary_percent=1.0, use_cpu_initialization=False)
    assert rope.inv_freq.device.type == "cpu"
    assert rope(8).shape[0] == 8


def test_synchronize_in_pipeline_p2p():
    """Patch 2: p2p_communication calls torch.cuda.synchronize() around batched sends."""
    from megatron.core.pipeline_parallel.p2p_communication import _batched_p2p_ops

    rank = dist.get_rank()
    send = torch.full((4,), float(rank))
    recv = torch.empty(4)
    peer = 1 - rank
    kwargs = dict(tensor_send_prev=None, tensor_recv_prev=None, tensor_send_next=None, tensor_recv_next=None,
                  group=dist.group.WORLD, prev_pipeline_rank=peer, next_pipeline_rank=peer)
    if rank == 0:
        kwargs.update(tensor_send_next=send, tensor_recv_next=recv)
    else:
        kwargs.update(tensor_send_prev=send, tensor_recv_prev=recv)
    for req in _batched_p2p_ops(**kwargs):
        req.wait()
    torch.cuda.synchronize()
    assert torch.equal(recv, torch.full((4,), float(peer)))


def test_hard_coded_cuda_devices_and_pin_memory():
    """Patch 3: grad_scaler / schedules create tensors with device='cuda'; .cuda(); pin_memory()."""
    from megatron.core.optimizer.grad_scaler import ConstantGradScaler

    assert ConstantGradScaler(2.0).scale.device.type == "cpu"
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    t = torch.ones(3)
    assert t.cuda() is t and t.pin_memory() is t and t.to("cuda").device.type == "cpu"


def test_the_mode_can_be_left_for_a_block():
    """cuda_redirect_suspended leaves the mode of patches 3 and 4 inside its block (a CUDA request
    fails there as in plain CPU torch), enters it again after it, also after an error, and does
    nothing while another mode sits above it."""
    from torch.overrides import TorchFunctionMode

    from megatron_omni.parallel.cpu_compat import cuda_redirect_suspended

    class Passthrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with cuda_redirect_suspended():
        with pytest.raises((AssertionError, RuntimeError)):
            torch.zeros(2, device="cuda")
        assert torch.ones(2).type() == "torch.FloatTensor"
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    with pytest.raises(KeyError), cuda_redirect_suspended():
        raise KeyError("inside")
    assert torch.ones(2).type() == "torch.cuda.FloatTensor"
    with Passthrough(), cuda_redirect_suspended():
        assert torch.zeros(2, device="cuda").device.type == "cpu"


def test_tensor_type_names_in_optimizer_checks():
    """Patch 4: clip_grads asserts grad.type() == 'torch.cuda.FloatTensor'."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
    assert torch.allclose(p.grad, torch.full((4,), 0.5), atol=1e-6)


def test_rng_tracker_forks_cpu_streams_per_tp_rank():
    """Patch 5: tensor_parallel.random's tracker (model_parallel_cuda_manual_seed / fork)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    set_seed(7)
    outer_before = torch.get_rng_state()
    with get_cuda_rng_tracker().fork():
        drawn = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outer_before), "fork must not move the default stream"
    gathered = [torch.empty(4) for _ in range(2)]
    dist.all_gather(gathered, drawn)
    assert not torch.equal(gathered[0], gathered[1]), "TP ranks must draw from different streams"
    set_seed(7)
    with get_cuda_rng_tracker().fork():
        again = torch.rand(4)
    assert torch.equal(drawn, again)
    assert parallel_state.get_tensor_model_parallel_world_size() == 2


def test_pipeline_broadcast_of_cpu_tensors():
    """Patch 6: inference.communication_utils asserts tensors are CUDA before broadcasting."""
    from megatron.core.inference.communication_utils import broadcast_from_last_pipeline_stage

    last = dist.get_rank() == 1
    value = torch.arange(3.0) if last else None
    out = broadcast_from_last_pipeline_stage([3], torch.float32, value, pp_group=dist.group.WORLD)
    assert torch.equal(out, torch.arange(3.0))


def test_libraries_keep_torch_s_own_factories():
    """Patch 3 leaves torch's own factories in place: transformers' weight loading compares and
    swaps them (a wrapped torch.tensor left the buffers of loaded models uninitialised), and a BERT
    encoder (the sentence-embedding reward's kind) loaded from a folder keeps its position ids."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=64)
    # One folder, written by rank 0 (transformers saves on the main process only).
    folder = [tempfile.mkdtemp() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(folder, src=0)
    if dist.get_rank() == 0:
        BertModel(config).save_pretrained(folder[0])
    dist.barrier()
    loaded = BertModel.from_pretrained(folder[0])
    assert torch.equal(loaded.embeddings.position_ids[0], torch.arange(64))
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(folder[0])
