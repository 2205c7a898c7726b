"""The learning-rate schedule, counted in optimizer steps (REFERENCE.md defect 7)."""

from __future__ import annotations

import pytest
import torch

from mmer.training.schedule import lr_at, make_scheduler, total_optimizer_steps, warmup_steps_for


def test_lr_at_hand_values():
    # 10 steps, 2 warm-up, base 1.0: warm-up 0.5, 1.0; decay (10 - s) / 8 for s = 2..9.
    got = [lr_at(s, 10, 2, 1.0) for s in range(11)]
    expected = [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0]
    assert got == pytest.approx(expected)
    assert lr_at(0, 5, 0, 2e-5) == pytest.approx(2e-5)
    assert lr_at(3, 4, 4, 1.0) == pytest.approx(1.0)


def test_lr_at_rejects_bad_arguments():
    with pytest.raises(ValueError):
        lr_at(0, 0, 0, 1.0)
    with pytest.raises(ValueError):
        lr_at(0, 10, 11, 1.0)


def test_step_counting_is_in_optimizer_steps():
    # 1000 samples, batch 4 -> 250 batches; accumulation 2 -> 125 optimizer steps per epoch.
    assert total_optimizer_steps(250, 10, 2) == 1250
    assert total_optimizer_steps(251, 1, 2) == 126
    assert warmup_steps_for(1250, 0.06) == 75


def test_scheduler_follows_lr_at_and_resumes():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=3e-4)
    sched = make_scheduler(opt, 10, 3)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, 10, 3, 3e-4) for s in range(6)])
    opt2 = torch.optim.AdamW([param], lr=3e-4)
    sched2 = make_scheduler(opt2, 10, 3)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_at(6, 10, 3, 3e-4))
