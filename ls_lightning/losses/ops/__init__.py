"""Kernels of the losses: the chunked one-pass eager kernel (:mod:`.fused`) and the code ``torch.compile`` traces
(:mod:`.traced`). Internal to :mod:`ls_lightning.losses`; call the functions there."""
