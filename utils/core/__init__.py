"""The floor every other package stands on: errors, the registry class, atomic files and run directories,
provenance, processes under torchrun, metrics, the torchvision guard and the allowed values of keys."""
