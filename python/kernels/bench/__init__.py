"""``kernels bench``: time our backends of one op against its peers and the machine's roofline.

Modules, one job each:

- ``specs``: per op, the shapes users run, the bytes each call moves, the input builders
  (``specs_attention``: the paged-attention ops, with their flops);
- ``peers``: what we compare against (torch eager, torch.compile, Liger when installed;
  ``peers_attention``: SDPA on contiguous K/V and our Triton backend for the attention ops);
- ``correctness``: every implementation is checked against the float32 reference before it is timed;
- ``ceilings``: copy / read bandwidth and matmul peak, measured at the start of every run;
- ``timing``: CUDA-graph replays timed with events on GPU, wall-clock medians on CPU;
- ``runner``: puts the above together into result records;
- ``report`` and ``plot``: the table, the result file (DESIGN.md "Measuring"), the PNG;
- ``cli``: the ``kernels bench`` subcommand.
"""
