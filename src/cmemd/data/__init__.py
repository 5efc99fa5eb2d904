"""Datasets: the image record, the SYSU-MM01, RegDB and LLCM readers (and their registry), the synthetic
benchmark, loading."""
from cmemd.data.images import load_image
from cmemd.data.records import MODALITIES, ImageRecord, modality_index
from cmemd.data.llcm import LLCM
from cmemd.data.regdb import RegDB
from cmemd.data.sysu import SYSUMM01, draw_gallery, load_rand_perm

__all__ = ["ImageRecord", "MODALITIES", "modality_index", "load_image", "SYSUMM01", "RegDB", "LLCM", "draw_gallery", "load_rand_perm"]
