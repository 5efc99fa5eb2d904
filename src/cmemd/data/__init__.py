"""Datasets as files: the image record, the readers (one module per dataset layout: they scan folders and return
records, knowing nothing of evaluation), the synthetic layouts, image loading and caching, the training loader."""

from cmemd.data.images import load_image
from cmemd.data.records import MODALITIES, ImageRecord, modality_index

__all__ = ["ImageRecord", "MODALITIES", "modality_index", "load_image"]
