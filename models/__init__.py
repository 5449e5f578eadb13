"""Networks, preprocessing, augmentation, and the MONAI Label infer and train tasks."""
