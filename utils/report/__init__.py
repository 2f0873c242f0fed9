"""What a run shows: markdown tables, PNG plots, visdom curves, cost profiles and the comparison of runs."""
