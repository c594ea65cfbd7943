"""yoloprune: network slimming for darknet YOLOv3-family detectors.

The stages talk through files and dataclasses; see README.md for the data flow.
"""

__version__ = "0.1.0"
