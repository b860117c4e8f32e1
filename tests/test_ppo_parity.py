"""PPO alike at every layout: with the rollouts fixed (a seeded batch), two updates of the value model and the
policy at TP2, PP2 and DP2 equal the single-process updates (losses and clip fractions; the second update's losses
are those of the weights after the first) within tests/test_parity.py's tolerances (1e-5 first step, 1e-4 after);
the scoring passes (log-probabilities, entropy, values, scores) agree within 1e-5, and the rollout decoder's greedy
responses are the same ids. The reference is the single-process run of the same worker (tests/parity/ppo_worker.py),
whose pieces are checked against formulas in tests/test_ppo_objective.py."""

import glob
import json

import pytest
from conftest import REPO
from parity_outputs import run_layouts

WORKER = str(REPO / "tests" / "parity" / "ppo_worker.py")
LAYOUTS = {"tp2": ["--tensor-model-parallel-size", "2"], "pp2": ["--pipeline-model-parallel-size", "2"], "dp2": []}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_parity")
    run_layouts(WORKER, LAYOUTS, root)
    return {name: json.load(open(glob.glob(str(root / name / "report.*.json"))[0])) for name in ["ref", *LAYOUTS]}


def close(got: float, want: float, rel: float) -> bool:
    return abs(got - want) <= rel * max(abs(want), 1e-3)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_update_matches_single_process(runs, layout):
    ref, got = runs["ref"], runs[layout]
    assert got["layout"] == {"tp": 2 if layout == "tp2" else 1, "pp": 2 if layout == "pp2" else 1,
                             "dp": 2 if layout == "dp2" else 1}
    assert got["greedy"] == ref["greedy"]
    for name, values in got["scores"].items():  # each tensor within 1e-5 of its scale
        flat_got, flat_want = _flat(values), _flat([ref["scores"][name][row] for row in got["rows"]])
        scale = max(abs(x) for x in flat_want)
        assert len(flat_got) == len(flat_want) > 0 and scale > 0, (layout, name)
        assert max(abs(a - b) for a, b in zip(flat_got, flat_want)) <= 1e-5 * scale, (layout, name)
    for step, (row, want) in enumerate(zip(got["steps"], ref["steps"])):
        tolerance = 1e-5 if step == 0 else 1e-4
        assert all(close(a, b, tolerance) for a, b in zip(row, want)), (layout, step, row, want)


def test_the_reference_update_moves_both_models(runs):
    """The second update's losses differ from the first's, and some tokens are clipped: the comparison above is
    not between models that did not move."""
    (v1, v_clip, p1, p_clip), (v2, _, p2, _) = runs["ref"]["steps"]
    assert v1 != v2 and p1 != p2 and v_clip > 0 and p_clip > 0
    assert len({tuple(r) for r in runs["ref"]["greedy"]}) == len(runs["ref"]["greedy"])


def _flat(values) -> list[float]:
    return [x for row in values for x in (row if isinstance(row, list) else [row])]
