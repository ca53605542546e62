"""Evaluation: full-video inference and both metric protocols (capsule hit rates, ACT detection AP).

Entry point: :func:`evaluate`. Pieces: :mod:`.inference` (predict_video, make_predict_fn),
:mod:`.evaluator` (the metric objects and the streaming Evaluator), :mod:`.metrics` (boxes, IoUs,
AP, tubes). The Markdown report is :func:`claus_jax.reporting.to_markdown`.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Sequence

import numpy as np
from tqdm import auto as tqdm

from claus_jax import reporting, tiling
from claus_jax.data.record import VideoRecord
from claus_jax.evaluation.evaluator import Evaluator
from claus_jax.evaluation.inference import PredictFn, make_predict_fn, predict_video

__all__ = ["Evaluator", "evaluate", "gather_evaluators", "make_predict_fn", "predict_record",
           "predict_video"]

_SKIP = {"skip2": 2, "dense": 1}


def gather_evaluators(evaluator: Evaluator) -> list[Evaluator]:
  """Every process's evaluator, in process order, on every process.

  Collective: every process must call it. One process: ``[evaluator]``. The evaluators travel
  pickled through :func:`claus_jax.parallel.allgather_rows` (bytes as uint8 rows); the bytes come
  only from this job's own processes.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from claus_jax import parallel  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return [evaluator]
  blob = np.frombuffer(pickle.dumps(evaluator, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
  sizes = parallel.allgather_rows(np.asarray([blob.size], np.int32))
  blobs = parallel.allgather_rows(blob)
  ends = np.cumsum(sizes)
  return [pickle.loads(blobs[end - size:end].tobytes()) for size, end in zip(sizes, ends)]


def predict_record(predict_fn: PredictFn, record: VideoRecord, eval_config):
  """``(mask_probs (T, H, W), class_probs (C,))`` of one video, tiled as the evaluation tiles it."""
  tiling_name = getattr(eval_config, "tiling", "skip2")
  if tiling_name not in _SKIP:
    raise ValueError(f"config.eval.tiling: {tiling_name!r}; use one of {tiling.TILINGS}.")
  return predict_video(predict_fn, record, eval_config.batch_size, _SKIP[tiling_name])


def evaluate(predict_fn: PredictFn, records: Sequence[VideoRecord], num_classes: int,
             class_names: Sequence[str], eval_config, progress: bool = True) -> tuple[dict, str]:
  """Predicts every video of ``records`` and evaluates both protocols.

  In a multi-process run each process predicts its contiguous share of the videos
  (:func:`claus_jax.parallel.process_slice`; ``predict_fn`` must use this process's devices only,
  as :func:`make_predict_fn` does), and the shares' evaluators are gathered to every process and
  merged in process order. The merge is exact and the video order is the one-process order, so
  every process returns the one-process result, bit for bit. Collective: every process must call it.

  Args:
    predict_fn: see :func:`predict_video` (e.g. from :func:`make_predict_fn`).
    records: test videos; indexed one at a time, so a lazy data source works.
    num_classes: C.
    class_names: C names.
    eval_config: ``config.eval``.
    progress: show a tqdm bar (of this process's share).

  Returns:
    ``(result dict, Markdown report)``; see :meth:`Evaluator.result` and
    :func:`claus_jax.reporting.to_markdown`.
  """
  from claus_jax import parallel  # pylint: disable=g-import-not-at-top

  evaluator = Evaluator(num_classes, class_names, eval_config)
  share = parallel.process_slice(len(records))
  for i in tqdm.tqdm(range(share.start, share.stop), desc="evaluate", unit="video",
                     disable=not progress):
    record = records[i]
    mask_probs, class_probs = predict_record(predict_fn, record, eval_config)
    evaluator.add(record, mask_probs, class_probs)
  result = functools.reduce(Evaluator.merge, gather_evaluators(evaluator)).result()
  return result, reporting.to_markdown(result)
