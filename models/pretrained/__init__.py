"""Pretrained models brought by a team: nnU-Net v2 result folders and MONAI bundles, with AMOS label maps."""
