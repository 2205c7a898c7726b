"""Losses of the TelME recipe against values computed independently with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmer.training.losses import (class_weights_from_counts, cross_entropy, dist_loss, feature_kd_loss,
                                  soft_target_kl, student_loss)

S_LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [-0.5, 0.2, 2.2], [1.0, 1.0, 0.0]])
T_LOGITS = np.array([[1.5, 0.0, -0.5], [0.0, 2.0, -1.0], [0.3, -0.2, 1.8], [2.0, 0.5, 0.1]])
LABELS = np.array([0, 1, 2, 1])
T_FEAT = np.array([[1.0, 0.0, 2.0, -1.0], [0.5, 1.5, -0.5, 0.0], [-1.0, 1.0, 0.0, 2.0]])
S_FEAT = np.array([[0.8, 0.2, 1.5, -0.5], [1.0, 1.0, 0.0, 0.5], [-0.2, 0.3, 0.1, 1.0]])


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_dist(zs: np.ndarray, zt: np.ndarray, tau: float) -> float:
    ys, yt = np_softmax(zs / tau), np_softmax(zt / tau)
    inter = np.mean([1 - np.corrcoef(ys[i], yt[i])[0, 1] for i in range(ys.shape[0])])
    intra = np.mean([1 - np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(ys.shape[1])])
    return tau ** 2 * (inter + intra)


def np_feature_kd(t_feat: np.ndarray, s_feat: np.ndarray, t: float) -> float:
    tn = t_feat / np.linalg.norm(t_feat, axis=1, keepdims=True)
    sn = s_feat / np.linalg.norm(s_feat, axis=1, keepdims=True)
    p, q = np_softmax(tn @ tn.T / t), np_softmax(tn @ sn.T / t)
    return float(np.mean(np.sum(p * np.log(p / q), axis=1)))


def tt(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32, requires_grad=grad)


def test_cross_entropy_matches_numpy_with_weights_and_smoothing():
    logp = np.log(np_softmax(S_LOGITS))
    nll = -logp[np.arange(4), LABELS]
    assert float(cross_entropy(tt(S_LOGITS), torch.tensor(LABELS))) == pytest.approx(nll.mean(), rel=1e-5)
    w = np.array([0.5, 2.0, 1.0])
    expected = (w[LABELS] * nll).sum() / w[LABELS].sum()
    got = cross_entropy(tt(S_LOGITS), torch.tensor(LABELS), class_weights=torch.tensor(w))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    eps = 0.1
    smooth = ((1 - eps) * nll - eps / 3 * logp.sum(axis=1)).mean()
    got = cross_entropy(tt(S_LOGITS), torch.tensor(LABELS), label_smoothing=eps)
    assert float(got) == pytest.approx(smooth, rel=1e-5)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_dist_matches_numpy(tau):
    assert float(dist_loss(tt(S_LOGITS), tt(T_LOGITS), tau)) == pytest.approx(np_dist(S_LOGITS, T_LOGITS, tau),
                                                                              rel=1e-4)


def test_dist_scales_with_tau_squared():
    # With the logits pre-scaled by tau the softmaxes are identical, so only the tau^2 factor differs.
    tau = 4.0
    base = float(dist_loss(tt(S_LOGITS), tt(T_LOGITS), 1.0))
    scaled = float(dist_loss(tt(S_LOGITS * tau), tt(T_LOGITS * tau), tau))
    assert scaled == pytest.approx(tau ** 2 * base, rel=1e-4)
    assert base > 0.05


def test_dist_is_zero_for_identical_predictions():
    # float32 rounding of 1 - pearson, times tau^2 = 16
    assert float(dist_loss(tt(S_LOGITS), tt(S_LOGITS), 4.0)) == pytest.approx(0.0, abs=1e-4)
    assert float(dist_loss(tt(S_LOGITS), tt(S_LOGITS), 1.0)) == pytest.approx(0.0, abs=1e-5)


def test_feature_kd_matches_numpy_and_is_zero_for_identical_features():
    for t in (1.0, 0.5):
        got = float(feature_kd_loss(tt(T_FEAT), tt(S_FEAT), t))
        assert got == pytest.approx(np_feature_kd(T_FEAT, S_FEAT, t), rel=1e-4)
    assert float(feature_kd_loss(tt(T_FEAT), tt(T_FEAT))) == pytest.approx(0.0, abs=1e-6)
    # L2 normalisation: scaling the student's rows changes nothing.
    assert float(feature_kd_loss(tt(T_FEAT), tt(3.0 * S_FEAT))) == pytest.approx(
        np_feature_kd(T_FEAT, S_FEAT, 1.0), rel=1e-4)


def test_student_loss_combines_eq6_and_grads_reach_only_the_student():
    zs, fs = tt(S_LOGITS[:3], grad=True), tt(S_FEAT, grad=True)
    zt, ft = tt(T_LOGITS[:3], grad=True), tt(T_FEAT, grad=True)
    alpha, beta, tau = 0.1, 2.0, 2.0
    out = student_loss(zs, fs, torch.tensor(LABELS[:3]), zt, ft, alpha=alpha, beta=beta, tau=tau)
    logp = np.log(np_softmax(S_LOGITS[:3]))
    ce = -logp[np.arange(3), LABELS[:3]].mean()
    expected = ce + alpha * np_dist(S_LOGITS[:3], T_LOGITS[:3], tau) + beta * np_feature_kd(T_FEAT, S_FEAT, 1.0)
    assert float(out.total.detach()) == pytest.approx(expected, rel=1e-4)
    out.total.backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert zt.grad is None and ft.grad is None


def test_student_loss_without_teacher_is_plain_ce():
    out = student_loss(tt(S_LOGITS), tt(S_FEAT[:1].repeat(4, 0)), torch.tensor(LABELS), None, None,
                       alpha=0.0, beta=0.0, tau=4.0)
    assert float(out.total) == pytest.approx(float(cross_entropy(tt(S_LOGITS), torch.tensor(LABELS))))
    with pytest.raises(ValueError, match="teacher logits"):
        student_loss(tt(S_LOGITS), tt(S_FEAT), torch.tensor(LABELS), None, None, alpha=1.0, beta=0.0, tau=4.0)


def test_shape_errors_are_explained():
    with pytest.raises(ValueError, match="teacher's width"):
        feature_kd_loss(tt(T_FEAT), tt(S_FEAT[:, :2]))
    with pytest.raises(ValueError, match="tau"):
        dist_loss(tt(S_LOGITS), tt(T_LOGITS), 0.0)


def test_class_weights_inverse_sqrt():
    w = class_weights_from_counts([100, 25, 4], "inverse_sqrt")
    raw = np.array([1 / 10, 1 / 5, 1 / 2])
    np.testing.assert_allclose(w.numpy(), raw / raw.mean(), rtol=1e-6)
    assert class_weights_from_counts([1, 2], "none") is None
    w0 = class_weights_from_counts([4, 0], "inverse")
    assert torch.isfinite(w0).all()


def test_soft_target_kl_matches_numpy_and_vanishes_on_its_own_targets():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 7))
    p = rng.dirichlet(np.ones(7), size=5)
    tau = 2.0
    q = np.exp(z / tau) / np.exp(z / tau).sum(1, keepdims=True)
    expected = tau ** 2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = soft_target_kl(torch.tensor(z), torch.tensor(p), tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert soft_target_kl(torch.tensor(z), torch.tensor(q), tau).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="tau must be > 0"):
        soft_target_kl(torch.tensor(z), torch.tensor(p), 0.0)
