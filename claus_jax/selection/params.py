"""The selection layer's settings, built once from the config (``config.selection`` and, for the
costs, ``config.budget``).

Its own module so that both :mod:`claus_jax.selection.frames` and
:mod:`claus_jax.selection.strategies` (which imports frames) can take it.
"""

from __future__ import annotations

import dataclasses

from claus_jax.selection.budget import BudgetParams


@dataclasses.dataclass(frozen=True)
class SelectionParams:
  """Every setting of ``config.selection`` that frames and strategies read, and the budget's.

  The defaults are configlib.base_config()'s ``selection`` section (the paper's); the budget's are
  :class:`BudgetParams`'s.

  Attributes:
    strategy: the inter-sample strategy (``selection.strategy``, a name of strategies.STRATEGIES).
    proximity_sigma: sigma of the proximity penalty g(d), in frames.
    nms_radius: frames either side of a pick that get g subtracted.
    entropy_skip: entropy baseline: frames ignored either side of a pick.
    restrict_to_gt_span: choose frames inside the ground-truth span (leaks labels; off by default).
    video_score: Eq. 1 over the picks' ``'raw'`` or ``'penalised'`` scores (frames.VIDEO_SCORES).
    cluster_quota: ``'proportional'`` or ``'cap'`` (strategies.CLUSTER_QUOTAS).
    cluster_cap: ``cluster_quota='cap'``: a cluster takes videos while its labelled count is at most
      ``int(cluster_cap * its size)``.
    budget: the costs and schedule (``config.budget``).
  """

  strategy: str = "claus"
  proximity_sigma: float = 8.0 / 3.0
  nms_radius: int = 4
  entropy_skip: int = 5
  restrict_to_gt_span: bool = False
  video_score: str = "raw"
  cluster_quota: str = "proportional"
  cluster_cap: float = 0.54
  budget: BudgetParams = dataclasses.field(default_factory=BudgetParams)

  @classmethod
  def from_config(cls, config) -> SelectionParams:
    """The settings of ``config.selection`` and ``config.budget``, read once."""
    sel = config.selection
    return cls(strategy=sel.strategy, proximity_sigma=float(sel.proximity_sigma),
               nms_radius=int(sel.nms_radius), entropy_skip=int(sel.entropy_skip),
               restrict_to_gt_span=bool(sel.restrict_to_gt_span),
               video_score=str(sel.video_score), cluster_quota=str(sel.cluster_quota),
               cluster_cap=float(sel.cluster_cap),
               budget=BudgetParams.from_section(config.budget))
