"""The application: command line, set-up from a config, the trainer and the pruner with one runner per
``prune.method``. Nothing below imports it."""
