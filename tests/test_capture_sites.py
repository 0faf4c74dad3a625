"""Selectors, Selection rows and site resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capture import BatchContext, RoleSpec, Selection, SiteError, decision, full, instruction
from capture._sites import resolve_sites


def _ctx(**kw) -> BatchContext:
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return BatchContext(sample=torch.tensor([7, 9]), prompt_mask=mask, image_offset=4, action_horizon=2, **kw)


def test_decision_takes_the_last_h_tokens():
    assert decision(3, _ctx()) == Selection(1, 3)  # pi0: [state][2 actions]
    with pytest.raises(SiteError, match="action_horizon"):
        decision(1, _ctx())


def test_instruction_rows_skip_padding():
    sel = instruction(8, _ctx())
    assert (sel.start, sel.stop) == (4, 7)
    rows, keep = sel.rows(torch.tensor([7, 9]))
    assert rows["sample"].tolist() == [7, 7, 9] and rows["position"].tolist() == [4, 5, 4]
    assert keep.tolist() == [0, 1, 3]
    with pytest.raises(SiteError, match="does not fit"):
        instruction(6, _ctx())


def test_full_uses_pad_mask_only_when_lengths_match():
    pad = torch.tensor([[True, False, True, True], [True, True, True, True]])
    ctx = _ctx(pad_mask=pad)
    rows, keep = full(4, ctx).rows(ctx.sample)
    assert rows["position"].tolist() == [0, 2, 3, 0, 1, 2, 3] and len(keep) == 7
    rows, keep = full(5, ctx).rows(ctx.sample)
    assert keep is None and np.array_equal(rows["sample"], np.repeat([7, 9], 5))


def test_context_validation():
    with pytest.raises(ValueError, match="prompt_mask"):
        BatchContext(sample=torch.tensor([1, 2]), prompt_mask=torch.ones(3, 4, dtype=torch.bool))


def test_resolve_sites_names_valid_roles():
    roles = {"decision": RoleSpec("expert", decision, stepped=True)}
    sites = resolve_sites({"expert": "e.layers.{i}"}, roles, [6, 10], ["decision"])
    assert [s.path for s in sites] == ["e.layers.6", "e.layers.10"] and sites[0].stepped
    with pytest.raises(SiteError, match=r"roles are \['decision'\]"):
        resolve_sites({"expert": "e.{i}"}, roles, [1], ["bogus"])
