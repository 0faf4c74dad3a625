"""Selectors, Selection rows, Site options and site resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capture import SELECTORS, BatchContext, RoleSpec, Selection, Site, SiteError, decision, full, instruction
from capture._sites import resolve_sites, suffix


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


def test_full_drops_padding_and_refuses_a_pad_mask_of_another_width():
    pad = torch.tensor([[True, False, True, True, True, False, True, False],
                        [True, True, True, True, True, False, False, False]])
    ctx = _ctx(pad_mask=pad)
    rows, keep = full(8, ctx).rows(ctx.sample)
    assert rows["position"].tolist() == [0, 2, 3, 4, 6, 0, 1, 2, 3, 4] and len(keep) == 10
    for wrong in (7, 9, 3):  # keeping every token (padding included) would be wrong rows, silently
        with pytest.raises(SiteError, match=rf"{wrong} tokens but BatchContext.pad_mask covers 8"):
            full(wrong, ctx)
    rows, keep = full(5, _ctx()).rows(ctx.sample)  # no pad mask: every token, nothing to drop
    assert keep is None and np.array_equal(rows["sample"], np.repeat([7, 9], 5))


def test_instruction_requires_the_prefix_width_when_a_pad_mask_is_given():
    ctx = _ctx(pad_mask=torch.ones(2, 8, dtype=torch.bool))
    assert (instruction(8, ctx).start, instruction(8, ctx).stop) == (4, 7)
    with pytest.raises(SiteError, match="9 tokens but BatchContext.pad_mask covers 8"):
        instruction(9, ctx)


def test_suffix_and_decision_check_the_suffix_length():
    ctx = _ctx()  # action_horizon 2, no suffix_len: at least 2 tokens
    assert suffix(3, ctx) == Selection(0, 3) and SELECTORS["suffix"] is suffix
    with pytest.raises(SiteError, match="action_horizon"):
        suffix(1, ctx)
    ctx = _ctx(suffix_len=3)  # pi0: [state][2 actions]
    assert decision(3, ctx) == Selection(1, 3) and suffix(3, ctx) == Selection(0, 3)
    for sel in (decision, suffix):
        with pytest.raises(SiteError, match="8 tokens but the expert's suffix has BatchContext.suffix_len=3"):
            sel(8, ctx)


def test_context_validation():
    with pytest.raises(ValueError, match="prompt_mask"):
        BatchContext(sample=torch.tensor([1, 2]), prompt_mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"prompt span \[4, 7\) does not fit the pad mask's 6"):
        _ctx(pad_mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="suffix_len=1 is shorter than the action horizon 2"):
        _ctx(suffix_len=1)
    with pytest.raises(ValueError, match="image_offset"):
        BatchContext(sample=torch.tensor([1]), image_offset=-1)


def test_site_options_are_validated():
    site = Site(1, "full", "layers.1", full)
    assert (site.output_index, site.output_key, site.batch_first) == (None, None, None)
    for bad, match in ((dict(output_index="1"), "output_index"), (dict(output_index=True), "output_index"),
                       (dict(output_key=""), "output_key"), (dict(batch_first=1), "batch_first"),
                       (dict(selector="full"), "selector must be callable")):
        kw = {"layer": 1, "role": "full", "path": "layers.1", "selector": full, **bad}
        with pytest.raises(SiteError, match=match):
            Site(**kw)


def test_resolve_sites_names_valid_roles():
    roles = {"decision": RoleSpec("expert", decision, stepped=True)}
    sites = resolve_sites({"expert": "e.layers.{i}"}, roles, [6, 10], ["decision"])
    assert [s.path for s in sites] == ["e.layers.6", "e.layers.10"] and sites[0].stepped
    with pytest.raises(SiteError, match=r"roles are \['decision'\]"):
        resolve_sites({"expert": "e.{i}"}, roles, [1], ["bogus"])
