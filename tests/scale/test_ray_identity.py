"""Issue 21 on the Ray path: a shard folder is trusted only with its plan, and a shard only if it
is its own block of this plan (a copied, foreign or pre-identity shard is redone).

The refusals happen before Ray starts; the one end-to-end case shares one local Ray instance
(module fixture) and is marked ``slow``. The dry-run judge (``backend="fake"``) with
``method="f1"`` named, so the default method does not matter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fliprm.config import RewardConfig
from fliprm.errors import ConfigError
from fliprm.scale import plan_shards, shard_path
from fliprm.scale._shards import write_shard

pq = pytest.importorskip("pyarrow.parquet")

F1 = RewardConfig(backend="fake", method="f1")


def _input(tmp_path: Path, n: int = 5, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": f"p{i}", "instruction": f"say {i}",
                                        "response": f"say {i}"}) + "\n" for i in range(n)))
    return path


def _rows(lines: list[int]) -> list[dict]:
    return [{"id": f"p{n - 1}", "line": n, "reward": 1.0} for n in lines]


# ---- no Ray: refused before any actor starts ---------------------------------------------------------


@pytest.mark.parametrize("plan", [None, "", "{}", '{"input": "x"}'])
def test_shards_without_a_valid_plan_are_refused(tmp_path, plan):
    pytest.importorskip("ray")
    from fliprm.scale import score_file_ray

    out = tmp_path / "out"
    out.mkdir()
    write_shard(out, 0, _rows([1, 2]))
    if plan is not None:
        (out / "_plan.json").write_text(plan)
    before = shard_path(out, 0).read_bytes()
    with pytest.raises(ConfigError, match=r"_plan\.json"):
        score_file_ray(_input(tmp_path), out, config=F1.updated(template="flip-short"),
                       shard_size=2, progress=False)
    assert shard_path(out, 0).read_bytes() == before  # nothing touched


def test_a_shard_that_is_not_its_own_block_of_this_plan_is_not_trusted(tmp_path):
    from fliprm.scale._ray import _shard_state
    from fliprm.scale._shards import shard_identity

    plan = plan_shards(_input(tmp_path), shard_size=2)
    s0, s1 = plan.shards[0], plan.shards[1]
    out = tmp_path / "out"
    out.mkdir()
    write_shard(out, 0, _rows([1, 2]), identity=shard_identity("fp", s0))
    assert _shard_state(shard_path(out, 0), s0, "fp") == "ok"
    assert _shard_state(shard_path(out, 0), s0, "another plan") == "bad"
    shutil.copy(shard_path(out, 0), shard_path(out, 1))  # same row count, block 0's rows
    assert _shard_state(shard_path(out, 1), s1, "fp") == "bad"
    # block 1's identity over block 0's rows (a hand-edited file): the lines give it away
    write_shard(out, 1, _rows([1, 2]), identity=shard_identity("fp", s1))
    assert _shard_state(shard_path(out, 1), s1, "fp") == "bad"
    write_shard(out, 1, _rows([3, 4]))  # no identity: written before shards carried one
    assert _shard_state(shard_path(out, 1), s1, "fp") == "bad"
    write_shard(out, 1, _rows([3, 4]), identity=shard_identity("fp", s1))
    assert _shard_state(shard_path(out, 1), s1, "fp") == "ok"


def test_a_corrupt_parquet_input_is_a_config_error(tmp_path):
    path = tmp_path / "in.parquet"
    path.write_bytes(b"PAR1 not parquet PAR1")
    with pytest.raises(ConfigError, match="not a readable parquet file"):
        plan_shards(path, shard_size=2)


# ---- with a local Ray instance ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _all_rows(out: Path) -> list[dict]:
    return [r for f in sorted(out.glob("shard-*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.mark.slow
def test_a_copied_shard_is_redone_and_a_lost_plan_refuses_other_settings(local_ray, tmp_path):
    from fliprm.scale import score_file_ray

    path, out = _input(tmp_path), tmp_path / "out"
    run = lambda config=F1, inp=path: score_file_ray(
        inp, out, config=config, shard_size=2, num_cpus_per_actor=0.5, progress=False)
    assert run().shards_written == 3
    expected = {r["line"]: r for r in _all_rows(out)}
    assert sorted(expected) == [1, 2, 3, 4, 5]

    # shard 0 copied over shard 1 (same row count): redone, not trusted
    shutil.copy(shard_path(out, 0), shard_path(out, 1))
    s = run()
    assert (s.shards_skipped, s.shards_written, s.scored) == (2, 1, 2)
    rows = _all_rows(out)
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]  # none lost, none doubled
    assert {r["line"]: r["reward"] for r in rows} == {k: r["reward"] for k, r in expected.items()}

    # the plan deleted, or emptied: another template or another input is refused, not mixed in
    for damage in ("delete", "empty"):
        plan = out / "_plan.json"
        saved = plan.read_bytes()
        plan.unlink() if damage == "delete" else plan.write_text("")
        with pytest.raises(ConfigError, match="no valid _plan.json"):
            run(config=F1.updated(template="flip"))
        with pytest.raises(ConfigError, match="no valid _plan.json"):
            run(inp=_input(tmp_path, n=8, name="other.jsonl"))
        plan.write_bytes(saved)
    assert [r["line"] for r in _all_rows(out)] == [1, 2, 3, 4, 5]
    assert run().shards_skipped == 3  # the restored plan resumes as before

    # --force starts the folder over under the new settings
    s = score_file_ray(path, out, config=F1.updated(template="flip"), shard_size=2,
                       num_cpus_per_actor=0.5, progress=False, force=True)
    assert s.shards_written == 3 and {r["template"] for r in _all_rows(out)} == {"flip"}
