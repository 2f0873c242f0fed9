"""Everything but the libraries (``models``, ``pruning``): one sub-package per stage of the pipeline.

Imports run one way: ``core`` <- ``models`` <- ``pruning`` <- the stages (``config``, ``data``, ``checkpoint``,
``train``, ``report``) <- ``app`` <- the entry scripts (see the README's "Code layout"; ``tests/test_layout.py``
checks it)."""
