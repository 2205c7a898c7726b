"""Training losses of the TelME recipe, as pure functions.

Equation numbers refer to the TelME paper (seeds/000, section 3.2.3):

- eq. (6)      L_student = L_cls + alpha * L_response + beta * L_feature   -> :func:`student_loss`
- eqs. (7-12)  L_response, DIST: Pearson-correlation distillation of the teacher's class
               preferences, between and within classes                    -> :func:`dist_loss`
- eqs. (13-15) L_feature: KL between the teacher-teacher and teacher-student similarity
               distributions of a batch                                   -> :func:`feature_kd_loss`

Shapes: B = batch, C = classes, D = feature width. The teacher is frozen in every stage that
uses these losses, so teacher tensors are detached here: no gradient can reach it even if a
caller forgets ``torch.no_grad``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Added to the norms of the centred vectors so a constant vector (e.g. the batch-direction of a
# batch of one) gives correlation 0 instead of NaN; the value of the DIST reference code.
PEARSON_EPS = 1e-8


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """L_cls of eq. (6): (optionally class-weighted, label-smoothed) cross-entropy.

    logits: (B, C); labels: (B,) int64 class indices; class_weights: (C,) or None.
    Returns a scalar; with weights it is the weighted mean (sum w_y * nll / sum w_y), as torch does.
    """
    if class_weights is not None:
        class_weights = class_weights.to(device=logits.device, dtype=torch.float32)
    return F.cross_entropy(logits.float(), labels, weight=class_weights, label_smoothing=label_smoothing)


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (cosine of the centred vectors)."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + PEARSON_EPS)


def _check_pair(student_logits: torch.Tensor, other: torch.Tensor, other_name: str, tau: float, loss: str) -> None:
    """ValueError unless both are (B, C) alike and the temperature is positive."""
    if student_logits.shape != other.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and {other_name} "
                         f"{tuple(other.shape)} must both be (B, C)")
    if tau <= 0:
        raise ValueError(f"{loss} temperature tau must be > 0, got {tau}")


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """L_response (DIST), eqs. (7)-(12).

    Y^s = softmax(Z^s / tau), Y^t = softmax(Z^t / tau)                      eqs. (8), (9)
    d(u, v) = 1 - pearson(u, v)                                             eq. (7)
    L_inter = tau^2 / B * sum_i d(Y^s_i,:, Y^t_i,:)   (over classes, per utterance)   eq. (10)
    L_intra = tau^2 / C * sum_j d(Y^s_:,j, Y^t_:,j)   (over the batch, per class)     eq. (11)
    L_response = L_inter + L_intra                                          eq. (12)

    student_logits, teacher_logits: (B, C). Returns a scalar. The teacher side is detached.
    With B = 1 the intra term is the constant tau^2 (a single value has no correlation), which
    adds no gradient.
    """
    _check_pair(student_logits, teacher_logits, "teacher logits", tau, "DIST")
    y_s = torch.softmax(student_logits.float() / tau, dim=1)
    y_t = torch.softmax(teacher_logits.detach().float() / tau, dim=1)
    inter = (1.0 - _pearson(y_s, y_t, dim=1)).mean()
    intra = (1.0 - _pearson(y_s, y_t, dim=0)).mean()
    return tau ** 2 * (inter + intra)


def soft_target_kl(student_logits: torch.Tensor, target_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """Knowledge distillation towards soft targets (Hinton et al. 2015): tau^2 * KL(p || softmax(z / tau)).

    student_logits: (B, C); target_probs: (B, C) rows summing to 1 (an ensemble's mean probability
    at the same tau). Returns the batch mean; tau^2 keeps its gradient on the scale of the CE term.
    """
    _check_pair(student_logits, target_probs, "soft targets", tau, "distillation")
    log_q = torch.log_softmax(student_logits.float() / tau, dim=1)
    return tau ** 2 * F.kl_div(log_q, target_probs.float(), reduction="batchmean")


def feature_kd_loss(teacher_feat: torch.Tensor, student_feat: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """L_feature, eqs. (13)-(15).

    T, S = L2-normalised teacher and student features (rows).
    M = T T^T (target similarities), M' = T S^T (teacher-student similarities), both (B, B).
    P_i = softmax(M_i,: / t)  eq. (13);  Q_i = softmax(M'_i,: / t)  eq. (14)
    L_feature = 1/B * sum_i KL(P_i || Q_i)                                  eq. (15)

    teacher_feat, student_feat: (B, D) with the same D (students project to the teacher's
    width). Returns a scalar. The teacher side is detached.
    """
    if teacher_feat.shape != student_feat.shape:
        raise ValueError(f"teacher features {tuple(teacher_feat.shape)} and student features "
                         f"{tuple(student_feat.shape)} must both be (B, D); the student's feature "
                         f"projection must match the teacher's width")
    if t <= 0:
        raise ValueError(f"feature-KD temperature t must be > 0, got {t}")
    teacher = F.normalize(teacher_feat.detach().float(), dim=1)
    student = F.normalize(student_feat.float(), dim=1)
    target = teacher @ teacher.T
    shared = teacher @ student.T
    log_p = torch.log_softmax(target / t, dim=1)
    log_q = torch.log_softmax(shared / t, dim=1)
    # KL(P || Q) = sum_j P_j (log P_j - log Q_j); "batchmean" is the 1/B of eq. (15).
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


@dataclass
class StudentLoss:
    """The parts of eq. (6); ``total`` is the one to back-propagate, the rest are for logging."""

    total: torch.Tensor
    cls: torch.Tensor
    response: torch.Tensor
    feature: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "cls": float(self.cls.detach()),
                "response": float(self.response.detach()), "feature": float(self.feature.detach())}


def student_loss(student_logits: torch.Tensor, student_feat: torch.Tensor, labels: torch.Tensor,
                 teacher_logits: torch.Tensor | None, teacher_feat: torch.Tensor | None, *,
                 alpha: float, beta: float, tau: float, feature_t: float = 1.0,
                 class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> StudentLoss:
    """L_student = L_cls + alpha * L_response + beta * L_feature, eq. (6).

    student_logits, teacher_logits: (B, C); student_feat, teacher_feat: (B, D); labels: (B,).
    A term whose weight is 0 is not computed, so alpha = beta = 0 needs no teacher (plain
    supervised training, e.g. the EmoDB voice model).
    """
    cls = cross_entropy(student_logits, labels, class_weights, label_smoothing)
    zero = torch.zeros((), device=cls.device)
    response, feature = zero, zero
    if alpha:
        if teacher_logits is None:
            raise ValueError("alpha > 0 needs teacher logits")
        response = dist_loss(student_logits, teacher_logits, tau)
    if beta:
        if teacher_feat is None:
            raise ValueError("beta > 0 needs teacher features")
        feature = feature_kd_loss(teacher_feat, student_feat, feature_t)
    return StudentLoss(total=cls + alpha * response + beta * feature, cls=cls, response=response, feature=feature)


def class_weights_from_counts(counts: list[int] | torch.Tensor, scheme: str) -> torch.Tensor | None:
    """Per-class CE weights from training-set class counts (C,), normalised to mean 1.

    scheme: "none" -> None; "inverse" -> 1 / n_c; "inverse_sqrt" -> 1 / sqrt(n_c) (milder: it
    lifts MELD's rare fear/disgust without drowning neutral). A class absent from training gets
    the largest weight seen rather than infinity.
    """
    if scheme == "none":
        return None
    n = torch.as_tensor(counts, dtype=torch.float64)
    if scheme == "inverse":
        w = 1.0 / n
    elif scheme == "inverse_sqrt":
        w = 1.0 / n.sqrt()
    else:
        raise ValueError(f"unknown class weighting '{scheme}'; choose none, inverse or inverse_sqrt")
    finite = w[torch.isfinite(w)]
    w = torch.where(torch.isfinite(w), w, finite.max() if finite.numel() else torch.ones(()))
    return (w / w.mean()).float()
