"""Evaluation: full-video inference and both metric protocols (capsule hit rates, ACT detection AP).

Entry point: :func:`evaluate`. Pieces: :mod:`.inference` (predict_video, make_predict_fn),
:mod:`.evaluator` (streaming Evaluator, Markdown), :mod:`.metrics` (boxes, IoUs, AP, tubes).
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import auto as tqdm

from claus_jax import tiling
from claus_jax.data.record import VideoRecord
from claus_jax.evaluation.evaluator import Evaluator, to_markdown
from claus_jax.evaluation.inference import PredictFn, make_predict_fn, predict_video

__all__ = ["Evaluator", "evaluate", "make_predict_fn", "predict_video", "to_markdown"]

_SKIP = {"skip2": 2, "dense": 1}


def evaluate(predict_fn: PredictFn, records: Sequence[VideoRecord], num_classes: int,
             class_names: Sequence[str], eval_config, progress: bool = True) -> tuple[dict, str]:
  """Predicts every video of ``records`` and evaluates both protocols.

  Args:
    predict_fn: see :func:`predict_video` (e.g. from :func:`make_predict_fn`).
    records: test videos; indexed one at a time, so a lazy data source works.
    num_classes: C.
    class_names: C names.
    eval_config: ``config.eval``.
    progress: show a tqdm bar.

  Returns:
    ``(result dict, Markdown report)``; see :meth:`Evaluator.result`.
  """
  tiling_name = getattr(eval_config, "tiling", "skip2")
  if tiling_name not in _SKIP:
    raise ValueError(f"config.eval.tiling: {tiling_name!r}; use one of {tiling.TILINGS}.")
  evaluator = Evaluator(num_classes, class_names, eval_config)
  for i in tqdm.tqdm(range(len(records)), desc="evaluate", unit="video", disable=not progress):
    record = records[i]
    mask_probs, class_probs = predict_video(predict_fn, record, eval_config.batch_size,
                                            _SKIP[tiling_name])
    evaluator.add(record, mask_probs, class_probs)
  result = evaluator.result()
  return result, to_markdown(result)
