"""Annotation tools in the human loop: a round's requests out to Label Studio, its export or a CVAT
export back as the round's ``answers.json`` (:mod:`claus_jax.oracle`'s files protocol).

People label the *original* video: its frame files and pixel coordinates. The run works on the
prepared frames (every frame kept, resized to ``data.frame_size`` square without cropping,
:mod:`claus_jax.data.official`). The mapping between them lives here (:mod:`.geometry`), so neither
the team nor the tool ever sees a prepared coordinate:

* time: prepared frame ``t`` (0-based) is original frame ``t``, the file numbered ``t + 1``
  (``00001.png`` is frame 0); preparation keeps every frame and only ``truncate_to_shorter`` cuts
  the end;
* space: a box's inclusive pixel corners scale as pixel areas, per axis (``official.scale_boxes``
  and its inverse :func:`.geometry.to_original_box`); shapes drawn as polygons are filled at the
  original size and resized like the dataset's masks (nearest neighbour).

Submodules: :mod:`.geometry` (the videos' original frames and the mapping), :mod:`.label_studio`
(export and import), :mod:`.cvat` (import of "CVAT for video 1.1" XML), :mod:`.answers` (answers.json
from any importer) and :mod:`.commands` (both commands as functions); the command line is
:mod:`claus_jax.annotate`.
"""
