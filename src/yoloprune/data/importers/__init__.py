"""Importers: Pascal VOC, COCO and Ultralytics datasets into this project's YOLO layout.

Each format's module reads its annotations into `SourceImage`s (pixel boxes in continuous image
coordinates: the image spans [0, width] × [0, height], pixel i covering [i, i + 1]); `classes`
maps class names (`--classes`, `--merge`), `split` assigns splits by fractions where the source
publishes none, and `writer` writes the dataset — the same files as every other dataset here::

    NAME.data, NAME.names, train.txt, valid.txt[, test.txt], import.txt (what the import did)
    images/{train,val,test}/<image>, labels/{train,val,test}/<image stem>.txt

The output folder is built beside OUT and renamed into place when complete; the source folder is
only read.
"""
