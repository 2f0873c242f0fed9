"""Datasets by name, DataLoaders, the seeded order and augmentation, and the device-resident loader."""
