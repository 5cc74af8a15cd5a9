"""The embedded real sample (60 Twitter-2015 posts with images and teacher chains); see README.md here."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "twitter2015"
SAMPLE_NAME = "twitter2015-sample"
