"""The embedded real samples; see README.md here.

- ``twitter2015`` (:data:`SAMPLE_DIR`): 60 Twitter-2015 posts with images and the authors' teacher chains (the demo);
- ``twitter2015-text`` (:data:`TEXT_SAMPLE_DIR`): 460 Twitter-2015 posts without images for the real-weights laptop
  recipe (``recipes/smollm2-cpu.toml``): 128 training and 32 dev posts with the authors' chains (each field cut to its
  first sentence) and 300 test posts from the original dev split.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "twitter2015"
SAMPLE_NAME = "twitter2015-sample"
TEXT_SAMPLE_DIR = Path(__file__).parent / "twitter2015-text"
#: ``@sample:NAME`` in a recipe
SAMPLES = {"twitter2015": SAMPLE_DIR, "twitter2015-text": TEXT_SAMPLE_DIR}
