"""Scale-out: score millions of pairs on a Ray cluster (needs ``pip install 'fliprm[ray]'``).

Ray is imported only when :func:`score_file_ray` runs, so importing this package is cheap.

>>> from fliprm.scale import RayOptions, score_file_ray
>>> score_file_ray("pairs.jsonl", "scores/", ray_options=RayOptions(actors=2)).mean_reward  # doctest: +SKIP
"""

from __future__ import annotations

from ..config import RayOptions
from ._ray import FlipBatchScorer, RaySummary, ShardReport, score_file_ray
from ._shards import Shard, ShardPlan, plan_shards, shard_path

__all__ = [
    "FlipBatchScorer",
    "RayOptions",
    "RaySummary",
    "Shard",
    "ShardPlan",
    "ShardReport",
    "plan_shards",
    "score_file_ray",
    "shard_path",
]
