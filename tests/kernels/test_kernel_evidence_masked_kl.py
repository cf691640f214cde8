"""evidence_masked_kl: OPPO's Omni-Perception loss term against float64 autograd through its
reference, `evidence_masked_kl_reference`."""
import pytest
import torch
from kernel_oracles import GRAD_ATOL, assert_close, make_logits

from megatron_omni.kernels import evidence_masked_kl, kl_reference
from megatron_omni.kernels.evidence_kl.reference import evidence_masked_kl_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

B, S, V = 2, 16, 600


def _inputs():
    full = make_logits((B, S, V), 1)
    masked = {"visual": make_logits((B, S, V), 2), "audio": make_logits((B, S, V), 3)}
    gen = torch.Generator().manual_seed(4)
    visual = torch.rand((B, S), generator=gen) > 0.6
    audio = ~visual & (torch.rand((B, S), generator=gen) > 0.5)
    return full, masked, {"visual": visual, "audio": audio}


def _oracle(full, masked, masks, **kw):
    x = full.detach().double().requires_grad_()
    loss = evidence_masked_kl_reference(x, {k: v.double() for k, v in masked.items()}, masks, dtype=torch.float64, **kw)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("sign", ["reward_divergence", "penalize_divergence"])
@pytest.mark.parametrize("kept", ["all_rows", "evidence_rows"])
def test_loss_and_gradient(backend, sign, kept):
    """``kept``: the masked logits of every row, or only each modality's evidence rows [n_m, V]
    (what OPPO keeps between its masked forwards and the loss)."""
    full, masked, masks = _inputs()
    x = full.clone().requires_grad_()
    masked_req = {k: (v[masks[k]] if kept == "evidence_rows" else v).clone().requires_grad_() for k, v in masked.items()}
    out = evidence_masked_kl(x, masked_req, masks, gamma=0.5, sign=sign, backend=backend)
    out.loss.backward()
    ref_loss, ref_grad = _oracle(full, masked, masks, gamma=0.5, sign=sign)
    assert_close(out.loss, ref_loss, 1e-6, "loss")
    assert_close(x.grad, ref_grad, GRAD_ATOL, "full-logits grad")
    assert all(v.grad is None for v in masked_req.values()), "masked forwards must get no gradient"
    assert out.n_evidence == {k: int(m.sum()) for k, m in masks.items()}
    assert (out.kl_per_token["visual"][~masks["visual"]] == 0).all()
    assert out.loss.item() * (1 if sign == "penalize_divergence" else -1) > 0


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_entropy_term_and_modality_without_evidence(backend):
    full, masked, masks = _inputs()
    masks["audio"] = torch.zeros_like(masks["audio"])
    masked["audio"] = masked["audio"][:0, 0]  # no evidence rows kept: [0, V]
    entropy_src = make_logits((B, S), 9).abs().requires_grad_()
    x = full.clone().requires_grad_()
    out = evidence_masked_kl(x, masked, masks, gamma=0.1, entropy=entropy_src, eta=0.2, backend=backend)
    out.loss.backward()
    assert out.n_evidence["audio"] == 0 and float(out.kl_mean["audio"]) == 0.0
    visual_kl = kl_reference(full.double(), masked["visual"].double(), "reverse", dtype=torch.float64)
    expected = -0.1 * visual_kl[masks["visual"]].mean() + 0.2 * entropy_src.double()[masks["visual"]].mean()
    assert_close(out.loss, expected, 1e-6, "loss")
    reference = evidence_masked_kl_reference(full.double(), {k: v.double() for k, v in masked.items()}, masks,
                                             gamma=0.1, entropy=entropy_src.detach(), eta=0.2, dtype=torch.float64)
    assert_close(reference, expected, 1e-12, "reference")
    expected_entropy_grad = 0.2 * masks["visual"].double() / masks["visual"].sum()
    assert_close(entropy_src.grad, expected_entropy_grad, 1e-7, "entropy grad")


def test_rejects_mismatched_modalities_and_sign():
    full, masked, masks = _inputs()
    with pytest.raises(ValueError, match="evidence_masks"):
        evidence_masked_kl(full, masked, {"visual": masks["visual"]})
    with pytest.raises(ValueError, match="sign"):
        evidence_masked_kl(full, masked, masks, sign="maximise")
    with pytest.raises(ValueError, match="entropy"):
        evidence_masked_kl(full, masked, masks, eta=0.1)
    with pytest.raises(ValueError, match=r"masked_logits\['audio'\]: must be a tensor shaped like"):
        evidence_masked_kl(full, {**masked, "audio": masked["audio"][:, :-1]}, masks)
    rows = masked["audio"][masks["audio"]]
    with pytest.raises(ValueError, match=rf"masked_logits\['audio'\]: holds {len(rows) - 1} evidence rows, "
                                         rf"evidence_masks\['audio'\] marks {len(rows)}"):
        evidence_masked_kl(full, {**masked, "audio": rows[1:]}, masks)
